"""Errors that a retry cannot fix, under orchestration.train: one attempt, exit 2, one line naming the file and the
fix, the MLflow run FAILED with the reason, the stored checkpoint kept (issue 24, section 3). Outputs and stores
that cannot be written fail before any cluster work; a weights file that does not load, in the data probe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from ray.train import ControllerError, WorkerGroupError

from mupvit.config import ConfigError
from mupvit.data import DataError
from mupvit.errors import OutputError
from mupvit.train import TrainingDiverged
from orchestration.failures import FAILURE_TAG, StopOnInputErrors, describe_failure, not_retried

from .test_orchestration import orchestrate, runs_in, write_config

REPO = Path(__file__).resolve().parent.parent


def needs_unshare() -> None:
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (root) for a private mount")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def stored_checkpoint(line: str) -> Path:
    """The stored checkpoint an error line names as kept."""
    return Path(re.search(r"(?:last checkpoint|newest checkpoint kept): (\S+?)[.;]?(?:\s|$)", line)[1])


# ---------------------------------------------------------------- which worker errors are retried (no Ray)


def test_only_errors_of_the_input_stop_the_run_without_a_retry():
    stop = StopOnInputErrors()
    stop.after_exception(None, {0: RuntimeError("a killed process, a lost connection")})  # retried: returns
    bad = DataError("cannot decode image /data/x.jpg: ... Remove or replace the file.")
    with pytest.raises(ControllerError) as raised:
        stop.after_exception(None, {1: RuntimeError("collateral: the collective was aborted"), 0: bad})
    assert not_retried(raised.value) is bad and not_retried(ControllerError(RuntimeError("x"))) is None
    for deterministic in (ConfigError("train.init_from: ..."), OutputError("cluster.storage_path: ... full"),
                          TrainingDiverged("loss became NaN at step 7; ...")):
        with pytest.raises(ControllerError):
            stop.after_exception(None, {0: deterministic})
    assert describe_failure(bad) == str(bad)
    crashed = WorkerGroupError("Training failed due to worker errors:\n[Rank 0]\nTraceback ...",
                               {0: ValueError("a bug\nmore lines")})
    assert describe_failure(crashed) == "ValueError: a bug"


# ---------------------------------------------------------------- outputs and stores probed before the cluster


def test_a_summary_json_that_is_a_directory_fails_before_any_cluster_work(tmp_path, capsys, monkeypatch):
    from orchestration.sweep import main as sweep_main
    from orchestration.train import main as train_main

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing answers there: reaching it would be another error
    monkeypatch.chdir(REPO)  # a sweep file names its base relative to the current directory
    assert train_main(["experiments/demo_digits.yaml", "--summary-json", str(tmp_path)]) == 2
    assert sweep_main(["experiments/sweeps/demo_mup_transfer.yaml", "--summary-json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == 2 * f"error: --summary-json: {tmp_path} is a directory; name a file to write, nothing was started\n"
    assert list(tmp_path.iterdir()) == []  # no store, no ray_results


READ_ONLY = """import os, sys
from orchestration.sweep import main as sweep
from orchestration.train import main as train
config, ro, db, repo = sys.argv[1:]
codes = [train([config, "--summary-json", f"{ro}/summary.json"])]
os.chdir(repo)  # a sweep file names its base relative to the current directory
codes.append(sweep(["experiments/sweeps/demo_mup_transfer.yaml", "--summary-json", f"{ro}/s.json"]))
codes += [train([config, "--set", f"tracking.uri=sqlite:///{ro}/mlflow.db"]),
          train([config, "--set", f"tracking.uri=sqlite:///{db}"])]
print(codes)
"""


@pytest.mark.slow
def test_a_read_only_summary_json_or_tracking_store_fails_before_any_cluster_work(digits_root, tmp_path):
    """On a real read-only file system (bind mounts in a private mount namespace: as root, chmod stops nothing): a
    --summary-json of orchestration.train or .sweep, a SQLite store in a read-only folder, and a read-only database
    file in a writable folder. Each exits 2 with one line before Ray is reached (RAY_ADDRESS answers nowhere)."""
    needs_unshare()
    config = write_config(tmp_path, digits_root, **{"cluster.storage_path": str(tmp_path / "ray_results")})
    (tmp_path / "src").mkdir()
    (tmp_path / "rw").mkdir()
    (tmp_path / "rw" / "mlflow.db").write_bytes(b"")
    ro, db = tmp_path / "ro", tmp_path / "rw" / "mlflow.db"
    ro.mkdir()
    script = (f"mount --bind {tmp_path / 'src'} {ro} && mount -o remount,bind,ro {ro} && mount --bind {db} {db} && "
              f"mount -o remount,bind,ro {db} && exec {sys.executable} -c '{READ_ONLY}' {config} {ro} {db} {REPO}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})
    assert done.stdout.strip() == "[2, 2, 2, 2]", done.stdout + done.stderr[-3000:]
    assert error_lines(done.stderr) == [
        f"error: --summary-json: cannot write to {ro} (Read-only file system); choose a writable folder, nothing was "
        "started",
        f"error: --summary-json: cannot write to {ro} (Read-only file system); choose a writable folder, nothing was "
        "started",
        f"error: MLflow SQLite store sqlite:///{ro}/mlflow.db: folder {ro} does not exist or is not writable; create "
        "it or set tracking.uri (or MLFLOW_TRACKING_URI) to a writable folder",
        f"error: tracking.uri (or MLFLOW_TRACKING_URI) sqlite:///{db}: cannot write to {db} (Read-only file system); "
        "choose a writable file, nothing was started"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "connecting" not in done.stderr
    assert not (tmp_path / "ray_results").exists() and db.read_bytes() == b""


# ---------------------------------------------------------------- met by a worker, or by the data probe


def bad_image_data(root: Path) -> Path:
    """8 train and 8 val images of 2 classes; train/c1/3.png is not an image. Returns that file."""
    for split in ("train", "val"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (16, 16), (60 * c + 10 * i,) * 3).save(root / split / f"c{c}" / f"{i}.png")
    bad = root / "train" / "c1" / "3.png"
    bad.write_bytes(b"\x89PNG not really")
    return bad


@pytest.mark.slow
def test_a_bad_training_image_stops_the_run_at_once_naming_it_and_keeps_the_checkpoint(ray_env, digits_root, tmp_path):
    """Before: Ray Train restarted the worker twice into the same image; exit 1 after ~110 s, naming a line of
    worker.py. Now: one attempt, exit 2, the worker's own line (the file, the fix, the stored checkpoint)."""
    bad = bad_image_data(tmp_path / "data")
    config = write_config(tmp_path, digits_root, **{
        "data.dataset": "imagefolder", "data.root": str(tmp_path / "data"), "model.num_classes": 2,
        "data.randaug_layers": 0, "train.batch_size": 2, "train.total_steps": 20, "train.eval_every": None,
        "train.ckpt_every": 100, "data.eval_batch_size": 8})
    done = orchestrate(tmp_path, config, ray_env, "tracking.run_name=bad_image", timeout=240)
    assert done.returncode == 2, done.stderr[-4000:]
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: cannot decode image {bad}: ") and "Remove or replace the file." in line, line
    assert "run the same command to resume" in line
    assert "Traceback" not in done.stderr and "worker.py" not in done.stderr, done.stderr[-4000:]
    assert done.stderr.count("start_step=") == 1  # one attempt: no worker restarted into the same image
    (run,) = runs_in(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == line.removeprefix("error: ")
    kept = stored_checkpoint(line)  # in the run's storage, not the worker's scratch folder (gone with it)
    assert kept.parent == tmp_path / "ray_results" / "bad_image", line
    assert torch.load(kept / "checkpoint.pt", weights_only=True)["step"] >= 1


@pytest.mark.slow
def test_a_missing_init_from_fails_in_the_data_probe_before_any_mlflow_run(ray_env, digits_root, tmp_path):
    """Before: not checked until every worker's setup, after the MLflow run was made; 3 attempts, 76 s."""
    done = orchestrate(tmp_path, write_config(tmp_path, digits_root), ray_env,
                       f"train.init_from={tmp_path / 'missing.pt'}", timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert error_lines(done.stderr) == [f"error: on a worker node: train.init_from: checkpoint not found: "
                                        f"{tmp_path / 'missing.pt'}"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "MLflow run" not in done.stderr
    assert runs_in(tmp_path) == [] if (tmp_path / "mlflow.db").exists() else True
    assert not (tmp_path / "ray_results").exists()


FULL_STORAGE = """mount -t tmpfs -o size={size} tmpfs {storage} && {python} -m orchestration.train {config}
code=$?; cp -a {storage}/. {copy}; exit $code"""


@pytest.mark.slow
def test_a_full_storage_path_stops_the_run_naming_the_checkpoint_kept(digits_root, tmp_path, monkeypatch):
    """cluster.storage_path on a tmpfs of 256 KiB in a private mount namespace, with the run's own local Ray inside it
    (its workers must see the mount): the checkpoint of step 2 (~150 KB) fits, that of step 4 does not. Before: Ray
    restarted the worker twice into the full disk, 169 lines with three tracebacks, exit 1.

    An eval at every step puts two reports between the two checkpoints: a worker's report waits until the controller
    has fetched the one before, and the controller handles one poll at a time, so the controller has recorded the
    checkpoint of step 2 (its snapshot file, on the same disk) before the copy of step 4 fills the disk."""
    needs_unshare()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage, copy = tmp_path / "storage", tmp_path / "copy"
    storage.mkdir()
    copy.mkdir()
    config = write_config(tmp_path, digits_root, **{
        "train.total_steps": 6, "train.ckpt_every": 2, "train.eval_every": 1, "tracking.run_name": "full",
        "cluster.storage_path": str(storage), "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    script = FULL_STORAGE.format(size="256k", storage=storage, python=sys.executable, config=config, copy=copy)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-4000:]
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: cluster.storage_path: cannot store the checkpoint of step 4 in {storage / 'full'} "
                           "(No space left on device); newest checkpoint kept: "), line
    assert line.endswith("Free space there and run the same command to resume"), line
    assert "Traceback" not in done.stderr and done.stderr.count("start_step=") == 1, done.stderr[-4000:]
    (run,) = runs_in(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == line.removeprefix("error: ")
    kept = copy / stored_checkpoint(line).relative_to(storage)
    assert torch.load(kept / "checkpoint.pt", weights_only=True)["step"] == 2
    assert [p.name for p in (copy / "full").glob("checkpoint_*") if p.is_dir()] == [kept.name]  # the partial one went
    assert kept.name in (copy / "full" / "checkpoint_manager_snapshot.json").read_text()  # what a resume reads
