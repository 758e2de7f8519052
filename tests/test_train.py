"""The training loop: exact resume, gradient accumulation, divergence, eval points and the CLI contract."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from mupvit.checkpoint import list_checkpoints, load_checkpoint
from mupvit.config import ConfigError, ModelConfig, OptimConfig, config_from_dict
from mupvit.models.vit import ViT
from mupvit.optim import build_optimizer
from mupvit.train import StopRequested, TrainingDiverged, eval_points, main, run, train_step

from .helpers import QuietLogger, tiny_config


def _params(path):
    return load_checkpoint(path)["model"]


def test_exact_resume_matches_straight_run(digits_root, tmp_path):
    # N steps straight vs N/2, stop, resume, N/2 more: identical parameters and Adam state, bit for bit.
    straight = run(tiny_config(digits_root, tmp_path / "a"), QuietLogger())
    cfg_b = tiny_config(digits_root, tmp_path / "b")
    half = run(cfg_b, QuietLogger(), stop_at_step=4)
    assert half["steps"] == 4 and not half["finished"]
    # Resumable settings change on the way (the data moved to another disk, other logging): the run goes on.
    moved = tmp_path / "moved"
    shutil.copytree(digits_root, moved)
    cfg_b = tiny_config(digits_root, tmp_path / "b", **{"data.root": str(moved), "train.log_every": 1})
    logger = QuietLogger()
    resumed = run(cfg_b, logger)
    logged = [step for kind, (step, values) in logger.events if kind == "metrics" and "train/loss" in values]
    assert logged == [5, 6, 7, 8]  # from the checkpoint of step 4 on, every step
    assert resumed["finished"] and resumed["steps"] == straight["steps"] == 8
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for idx, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][idx]["exp_avg_sq"])
    assert a["stream_position"] == b["stream_position"] == 8 * 32
    assert straight["val"] == resumed["val"]


def test_a_stop_request_saves_the_step_it_came_at_and_the_resume_loses_nothing(digits_root, tmp_path):
    # A preemption notice after step 3, between the checkpoints of steps 4 and 8: the run saves step 3 and stops;
    # resumed from there, it ends on the straight run's parameters, bit for bit.
    settings = {"train.ckpt_every": 4, "train.log_every": 1}
    straight = run(tiny_config(digits_root, tmp_path / "a", **settings), QuietLogger())
    cfg = tiny_config(digits_root, tmp_path / "b", **settings)
    asked = iter([False, False, True])  # asked after steps 1, 2 and 3
    with pytest.raises(StopRequested) as stop:
        run(cfg, QuietLogger(), stop_requested=lambda: next(asked))
    assert stop.value.step == 3 and stop.value.checkpoint == str(list_checkpoints(tmp_path / "b")[-1])
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path / "b")] == [3]
    logger = QuietLogger()
    resumed = run(cfg, logger, stop_requested=lambda: False)
    assert [step for kind, (step, v) in logger.events if kind == "metrics" and "train/loss" in v] == [4, 5, 6, 7, 8]
    a, b = _params(straight["checkpoint"]), _params(resumed["checkpoint"])
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_resume_with_other_config_is_refused(digits_root, tmp_path):
    run(tiny_config(digits_root, tmp_path), QuietLogger(), stop_at_step=2)
    changed = tiny_config(digits_root, tmp_path, **{"optim.lr": 5e-3})
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.002 -> 0\.005"):
        run(changed, QuietLogger())
    fresh = tiny_config(digits_root, tmp_path, **{"train.resume": False})
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(fresh, QuietLogger())


def test_checkpoints_are_atomic_safe_and_pruned(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, **{"train.ckpt_every": 2, "train.keep_ckpts": 2})
    run(cfg, QuietLogger())
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["ckpt_000000006.pt", "ckpt_000000008.pt"]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
    state = torch.load(kept[-1], weights_only=True)  # loads under the safe unpickler
    assert state["step"] == 8 and state["config"]["optim"]["lr"] == 2e-3


def test_gradient_accumulation_equals_full_batch():
    torch.manual_seed(0)
    mcfg = ModelConfig(variant=None, width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=4, num_classes=10)
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    results = []
    for accum in (1, 4):
        torch.manual_seed(1)
        model = ViT(mcfg, 16)
        torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would give zero grads upstream
        optimizer = build_optimizer(model, OptimConfig(warmup_steps=1, clip_norm=None), total_steps=10)
        loss, grad_norm, _ = train_step(model, optimizer, images, labels, 3, accum, None, "fp32")
        results.append((loss.item(), grad_norm.item(), [p.detach().clone() for p in model.parameters()]))
    (loss1, norm1, params1), (loss4, norm4, params4) = results
    assert loss1 == pytest.approx(loss4, rel=1e-5)
    assert norm1 == pytest.approx(norm4, rel=1e-4)
    for p1, p4 in zip(params1, params4, strict=True):
        torch.testing.assert_close(p1, p4, rtol=1e-5, atol=1e-6)


# optax's Adam leaves a parameter whose squared gradient overflows where it is (nu = inf: the update is 0, not NaN),
# so these runs diverge through the head: at lr 1e37 its logits overflow at the second step.
DIVERGING_LR = 1e37


def test_divergence_stops_with_step_and_checkpoint(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, **{
        "optim.lr": DIVERGING_LR, "optim.warmup_steps": 0, "optim.clip_norm": None, "train.ckpt_every": 1,
    })
    with pytest.raises(TrainingDiverged, match=r"at step (\d+); last good checkpoint: .*ckpt_0+\d+\.pt"):
        run(cfg, QuietLogger())


def test_divergence_between_log_steps_names_the_interval_and_writes_no_diverged_checkpoint(digits_root, tmp_path):
    # The loss is read at log, eval and checkpoint steps only: the error names the steps since the last read.
    cfg = tiny_config(digits_root, tmp_path, **{
        "optim.lr": DIVERGING_LR, "optim.warmup_steps": 0, "optim.clip_norm": None, "train.log_every": 3,
        "train.eval_every": None, "evals": {}, "train.ckpt_every": None,
    })
    with pytest.raises(TrainingDiverged, match=r"^loss became NaN or infinite between steps 1 and 3; "
                                               r"last good checkpoint: none\. Lower optim\.lr or raise "
                                               r"optim\.warmup_steps$"):
        run(cfg, QuietLogger())
    assert not list(tmp_path.glob("ckpt_*.pt"))


def test_eval_points_name_epoch_equivalents():
    cfg = config_from_dict({
        "data": {"dataset": "digits", "num_train_examples": 1000},
        "model": {"variant": None, "width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "patch_size": 4,
                  "num_classes": 10},
        "optim": {"warmup_steps": 1},
        "train": {"epochs": 10, "batch_size": 100, "eval_every": 40, "eval_at_epochs": [2.5, 10]},
    })
    # round(1000 * 2.5 / 100) = 25; 10 epochs = step 100, also the last step and a periodic point.
    assert eval_points(cfg, 1000, 100) == {40: [], 80: [], 25: [2.5], 100: [10.0]}


def test_summary_has_named_epoch_results(digits_root, tmp_path):
    # 0.1 epochs of the 1438 digits train images at batch 32 is step round(143.8 / 32) = 4.
    logger = QuietLogger()
    summary = run(tiny_config(digits_root, tmp_path, **{"train.eval_at_epochs": [0.1]}), logger)
    assert set(summary["val"]) == {"acc1", "acc5", "loss"}
    at_step_4 = [values for kind, (step, values) in logger.events if kind == "metrics" and step == 4]
    reported = {k: v for values in at_step_4 for k, v in values.items()}
    assert summary["acc1_at_0.1ep"] == reported["acc1_at_0.1ep"] == reported["val/acc1"]
    assert 0.0 <= summary["val"]["acc1"] <= summary["val"]["acc5"] <= 1.0


def test_bf16_autocast_runs_on_cpu(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, **{
        "train.precision": "bf16", "train.total_steps": 2, "optim.warmup_steps": 1,
    })
    summary = run(cfg, QuietLogger())
    assert summary["finished"] and summary["val"]["loss"] > 0


def test_cli_prints_json_summary_last(digits_root, tmp_path, capsys):
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(tiny_config(digits_root, tmp_path / "out").to_yaml())
    summary_path = tmp_path / "summary.json"
    assert main([str(cfg_path), "--set", "train.total_steps=3", "--summary-json", str(summary_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary == json.loads(summary_path.read_text())
    assert summary["steps"] == 3 and summary["wall_s"] > 0 and summary["images_per_s"] > 0
    assert set(summary["val"]) == {"acc1", "acc5", "loss"}


def test_cli_rejects_bad_config_before_training(tmp_path, capsys):
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text("model:\n  widht: 64\n")
    assert main([str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "model: unknown key(s) widht" in err and "allowed:" in err
    assert not (tmp_path / "runs").exists()


def test_devices_above_one_need_distributed_launch(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, **{"train.devices": 2})
    with pytest.raises(ConfigError, match="train.devices: 2, but this process group has 1"):
        run(cfg, QuietLogger())


@pytest.mark.slow
def test_demo_reaches_97_percent(tmp_path):
    """The demo's bar: the shipped demo config reaches >= 97% val top-1 (about two minutes on 2 cores)."""
    summary_path = tmp_path / "summary.json"
    code = main(["experiments/demo_digits.yaml", "--set", f"train.out_dir={tmp_path / 'run'}",
                 "--set", f"data.root={tmp_path / 'digits'}", "--summary-json", str(summary_path)])
    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["val"]["acc1"] >= 0.97, summary


def test_a_sigterm_to_the_cli_saves_the_step_it_reached_and_the_same_command_resumes_there(digits_root, tmp_path,
                                                                                            reference):
    """`python -m mupvit.train` (no Ray) under `kill` or a scheduler's preemption: the step under way ends, its
    checkpoint is saved, one line and exit 130; the same command resumes there and ends on the uninterrupted run's
    parameters (tests/conftest.py's reference: this config in one thread), bit for bit. Ctrl-C takes the same path
    (mupvit/stop_signals.py; tests/test_signals.py sends it both)."""
    from .test_orchestration import write_config

    config = write_config(tmp_path, digits_root)
    command = [sys.executable, "-m", "mupvit.train", str(config), "--set", f"train.out_dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as the reference
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as first:
        for line in first.stderr:
            if line.startswith("[step 3/"):  # training, between two checkpoints (every 4 steps)
                os.kill(first.pid, signal.SIGSTOP)  # it stops where it is: the step it reached is known
                break
        first.send_signal(signal.SIGTERM)
        os.kill(first.pid, signal.SIGCONT)
        err = first.stderr.read()
    assert first.returncode == 130, err[-3000:]
    (said,) = [line for line in err.splitlines() if line.startswith("stopped")]
    step = int(re.search(r"after step (\d+),", said)[1])
    assert said.startswith("stopped (SIGTERM)") and "run the same command to resume" in said, said
    assert 3 <= step <= 4 and f"checkpoint {tmp_path / 'run'}/ckpt_" in said, said
    assert "Traceback" not in err, err[-3000:]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"start_step={step}," in again.stderr, again.stderr[-3000:]
    final = torch.load(json.loads(again.stdout.strip().splitlines()[-1])["checkpoint"], weights_only=True)["model"]
    for key, tensor in final.items():
        assert torch.equal(tensor, reference[key]), key
