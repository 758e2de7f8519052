"""Finished work is never lost: unwritable outputs fail before training, one process per output folder (an OS lock
that dies with its holder), resume skips a bad newest checkpoint, and a bad image met mid-run leaves a checkpoint
at the last completed step and one clear line."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from mupvit.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from mupvit.config import ConfigError, config_from_dict
from mupvit.data import DataError
from mupvit.outputs import FolderLock
from mupvit.train import main, run

from .helpers import QuietLogger, corrupt_jpeg, tiny_config

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    return path


@pytest.mark.parametrize("out_dir", ["/dev/null", "/proc/mupvit-run"])
def test_an_unwritable_out_dir_fails_before_training(digits_root, tmp_path, capsys, out_dir):
    config = write_config(tmp_path, tiny_config(digits_root, Path(out_dir)))
    started = time.monotonic()
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.out_dir: cannot write to") and out_dir in err and err.count("\n") == 1
    assert time.monotonic() - started < 10


def test_an_out_dir_below_a_file_and_an_unwritable_summary_fail_before_training(digits_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([str(write_config(tmp_path, tiny_config(digits_root, blocker / "run")))]) == 2
    assert "train.out_dir: cannot write to" in capsys.readouterr().err
    config = write_config(tmp_path, tiny_config(digits_root, tmp_path / "ok"))
    assert main([str(config), "--summary-json", str(blocker / "summary.json")]) == 2
    assert "--summary-json: cannot write to" in capsys.readouterr().err
    assert not list((tmp_path / "ok").glob("ckpt_*.pt"))  # nothing was trained


def test_a_second_process_on_the_same_out_dir_is_refused_naming_the_first(digits_root, tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path, tiny_config(digits_root, out))
    with FolderLock(out, "train.out_dir"):
        assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert f"train.out_dir: {out} is in use by pid {os.getpid()}" in err
    assert not list(out.glob("ckpt_*.pt"))
    assert main([str(config)]) == 0  # released: the same command now runs


def test_the_lock_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from pathlib import Path; from mupvit.outputs import FolderLock\n"
            "with FolderLock(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by pid {holder.pid}"), FolderLock(tmp_path, "x"):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with FolderLock(tmp_path, "x"):  # a rerun after a crash takes over
            pass
    finally:
        holder.kill()


def test_resume_skips_a_truncated_newest_checkpoint_and_continues_exactly(digits_root, tmp_path, capsys):
    straight = run(tiny_config(digits_root, tmp_path / "straight"), QuietLogger())
    out = tmp_path / "resumed"
    run(tiny_config(digits_root, out), QuietLogger(), stop_at_step=8)  # checkpoints at 4 and 8 of 8
    first, newest = list_checkpoints(out)
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = run(tiny_config(digits_root, out), QuietLogger())
    assert f"skipping {newest}: not a readable checkpoint" in capsys.readouterr().err
    assert resumed["val"] == straight["val"]
    a, b = load_checkpoint(resumed["checkpoint"])["model"], load_checkpoint(straight["checkpoint"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.exists()  # nothing deleted but what the keep_ckpts pruning removes


def test_files_named_like_checkpoints_are_skipped_and_never_push_ours_out(digits_root, tmp_path, capsys):
    """Foreign files named for later steps (text, a tensor, a dict without the run's state) are skipped on resume,
    and pruning to keep_ckpts=1 keeps this run's newest checkpoint: they prove nothing about ours."""
    out = tmp_path / "run"
    cfg = tiny_config(digits_root, out, **{"train.keep_ckpts": 1, "train.ckpt_every": 2})
    run(cfg, QuietLogger(), stop_at_step=4)
    foreign = [checkpoint_path(out, 999), checkpoint_path(out, 998), checkpoint_path(out, 997)]
    foreign[0].write_text("notes")
    torch.save(torch.zeros(2), foreign[1])
    torch.save({"format_version": 1, "model": {}}, foreign[2])
    summary = run(cfg, QuietLogger())
    err = capsys.readouterr().err
    assert all(f"skipping {path}: not a readable checkpoint" in err for path in foreign), err
    assert "weights_only" not in err
    assert Path(summary["checkpoint"]) == checkpoint_path(out, 8) and checkpoint_path(out, 8).exists()
    assert list_checkpoints(out) == [checkpoint_path(out, 8), *reversed(foreign)]  # ours pruned to 1, theirs kept
    again = run(cfg, QuietLogger())  # the same command once more: resumes from step 8, nothing left to train
    assert again["finished"] and again["checkpoint"] == summary["checkpoint"]


def test_when_no_checkpoint_loads_resume_fails_naming_them(digits_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for step in (4, 8):
        (out / f"ckpt_{step:09d}.pt").write_bytes(b"garbage")
    assert main([str(write_config(tmp_path, tiny_config(digits_root, out)))]) == 2
    err = capsys.readouterr().err
    assert "none of the checkpoints" in err and "ckpt_000000004.pt, ckpt_000000008.pt" in err
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_000000004.pt", "ckpt_000000008.pt"]


def bad_image_run(tmp_path: Path, workers: int, **overrides) -> tuple[object, Path]:
    """A 20-step run over 8 train images, one of which (c1/3.png) is not an image."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (16, 16), (60 * c + 10 * i,) * 3).save(folder / f"{i}.png")
    bad = root / "train" / "c1" / "3.png"
    bad.write_bytes(b"\x89PNG not really")
    cfg = config_from_dict({
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 16, "eval_resize": 16, "flip": False,
                 "randaug_layers": 0, "num_workers": workers, "eval_batch_size": 8},
        "model": {"variant": None, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32, "patch_size": 4,
                  "num_classes": 2},
        "optim": {"warmup_steps": 0},
        "train": {"epochs": None, "total_steps": 20, "batch_size": 2, "eval_every": None, "eval_at_epochs": [],
                  "ckpt_every": 100, "log_every": 4, "out_dir": str(tmp_path / "run")}},
        [f"{k}={v}" for k, v in overrides.items()])
    return cfg, bad


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_mid_run_saves_the_last_step_and_names_the_file(tmp_path, workers):
    cfg, bad = bad_image_run(tmp_path, workers)
    with pytest.raises(DataError) as err:
        run(cfg, QuietLogger())
    text = str(err.value)
    assert text.startswith(f"cannot decode image {bad}") and "Traceback" not in text and "\n" not in text
    saved = list_checkpoints(tmp_path / "run")
    assert len(saved) == 1 and f"last checkpoint: {saved[0]}" in text
    assert 0 < load_checkpoint(saved[0])["step"] < 20


def test_corrupt_jpeg_data_pillow_recovers_is_trained_on_named_once_and_counted(tmp_path, capsys):
    cfg, bad = bad_image_run(tmp_path, 0)
    bad.unlink()
    recovered = corrupt_jpeg(bad.with_suffix(".jpg"), (16, 16))
    logger = QuietLogger()
    summary = run(cfg, logger)
    # 20 steps x 2 images over 8 files: 5 passes, each meets the corrupt file once; one warning names it
    logged = [values["train/recovered_images"] for kind, (_, values) in logger.events
              if kind == "metrics" and "train/recovered_images" in values]
    assert summary["finished"] and summary["recovered_images"] == 5 == sum(logged)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {recovered}: corrupt JPEG data that libjpeg-turbo refuses, decoded by the fallback "
                        "decoder (Pillow, not TF's pixels) and trained on; counted as train/recovered_images (python "
                        "-m mupvit.data.check lists every such file)"]


def test_on_bad_image_skip_trains_on_counting_what_it_skipped_and_resumes_exactly(tmp_path):
    cfg, _ = bad_image_run(tmp_path, 1, **{"data.on_bad_image": "skip"})
    logger = QuietLogger()
    summary = run(cfg, logger)
    # 20 steps x 2 images over 8 files: 5 passes, each meets the bad file once
    logged = [values["train/skipped_images"] for kind, (_, values) in logger.events
              if kind == "metrics" and "train/skipped_images" in values]
    assert summary["finished"] and summary["skipped_images"] == 5 == sum(logged) and len(logged) == 5
    straight = load_checkpoint(summary["checkpoint"])["model"]
    # The substitutes depend on the stream position only: a run stopped and resumed ends identical.
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(tmp_path / "halves")))
    run(half, QuietLogger(), stop_at_step=9)
    resumed = load_checkpoint(run(half, QuietLogger())["checkpoint"])["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_on_bad_image_skip_still_fails_on_a_bad_eval_image(tmp_path):
    cfg, _ = bad_image_run(tmp_path, 0, **{"data.on_bad_image": "skip", "train.eval_every": 10})
    bad_val = Path(cfg.data.root) / "val" / "c0" / "0.png"
    bad_val.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"cannot decode image {bad_val}"):
        run(cfg, QuietLogger())


FILE_SIZE_CAP = """
import resource, signal, sys
from mupvit.train import main
# A checkpoint is some 50 KB: a 20 KB cap on every file written fails it as a full disk would (EFBIG, not a signal).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
sys.exit(main(sys.argv[1:]))
"""


def test_a_checkpoint_that_cannot_be_written_keeps_the_older_ones_and_says_how_to_resume(digits_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(digits_root, out, **{"train.total_steps": 8})
    config = write_config(tmp_path, cfg)
    run(cfg, QuietLogger(), stop_at_step=4)  # ckpt 4, written without the cap
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_CAP, str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and f"cannot write checkpoint {out / 'ckpt_000000008.pt'} (File too large)" in errors[0]
    assert f"newest kept: {out / 'ckpt_000000004.pt'}" in errors[0] and "run the same command" in errors[0]
    assert sorted(p.name for p in out.iterdir() if "ckpt" in p.name) == ["ckpt_000000004.pt"]  # no partial file
    assert load_checkpoint(out / "ckpt_000000004.pt")["step"] == 4


@pytest.mark.parametrize("eval_every", ["null", 2])
def test_a_bad_val_image_saves_the_trained_steps_says_one_line_and_the_resume_runs_that_eval(tmp_path, capsys,
                                                                                              eval_every):
    """At the final eval (eval_every null) or a mid-run one (eval_every 2), with no periodic checkpoint: the steps
    trained are saved before the run stops, the worker's traceback stays off the console, and the resume after the
    fix runs the eval that failed."""
    cfg, bad_train = bad_image_run(tmp_path, 1, **{"train.ckpt_every": "null", "train.total_steps": 6,
                                                   "train.eval_every": eval_every})
    Image.new("RGB", (16, 16)).save(bad_train)  # only the val image is bad here
    bad_val = Path(cfg.data.root) / "val" / "c0" / "0.png"
    bad_val.write_bytes(b"not an image")
    config = write_config(tmp_path, cfg)
    assert main([str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("[step", "run:"))]
    step = 6 if eval_every == "null" else 2
    saved = checkpoint_path(tmp_path / "run", step)
    assert errors == [f"error: cannot decode image {bad_val}: cannot identify image file '{bad_val}'. Remove or "
                      f"replace the file. (stopped in the eval of step {step}; last checkpoint: {saved}; run the "
                      "same command to resume)"]
    assert list_checkpoints(tmp_path / "run") == [saved] and load_checkpoint(saved)["eval_pending"]
    Image.new("RGB", (16, 16)).save(bad_val)
    assert main([str(config)]) == 0
    assert '"val": {"acc1"' in capsys.readouterr().out
    final = load_checkpoint(checkpoint_path(tmp_path / "run", 6))
    assert not final["eval_pending"] and "val" in final["eval"]


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_that_stops_in_setup_leaves_the_out_dir_as_it_found_it(digits_root, tmp_path, capsys, existed):
    """train.devices 2 in one process fails in setup, inside the folder lock: no lock file is left, and a folder
    the run made (with the parents it made) is removed again; one that existed keeps what it held."""
    out = tmp_path / "made" / "run"
    if existed:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    config = write_config(tmp_path, tiny_config(digits_root, out, **{"train.devices": 2, "train.batch_size": 32}))
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.devices: 2, but this process group has 1") and err.count("\n") == 1
    if existed:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not (tmp_path / "made").exists()
