"""Sweeps that fail: every trial failing ends the sweep with one line and its runs FAILED; some trials failing
leaves the best of the others; a second driver of one sweep is refused; an unwritable local storage path is refused
before any cluster work. A trial fails here on a data.root that the driver's checks cannot see (the driver probes
the base experiment's data, a searched data.root is a trial's own): a folder that is not a digits build."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestration.sweep import main as sweep_main

from .test_output_probes import immutable_dir  # noqa: F401 (a fixture)
from .test_sweep import STEPS, runs, write_sweep

NOT_DIGITS = "exists but is not a digits demo build (no dataset.json)"


def not_digits(folder: Path, name: str) -> str:
    """A data.root that fails in the trial's own data setup (a DataError: a bad input, exit 2)."""
    root = folder / name
    root.mkdir(parents=True)
    (root / "other.txt").write_text("not a dataset")
    return str(root)


def start(folder: Path, path: Path, env: dict, log: str) -> subprocess.Popen:
    """A sweep driver with its console in folder/log.{out,err} (never a full pipe)."""
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    return subprocess.Popen([sys.executable, "-m", "orchestration.sweep", str(path)], cwd=folder, env=env,
                            stdout=open(folder / f"{log}.out", "w"), stderr=open(folder / f"{log}.err", "w"))


def finish(folder: Path, driver: subprocess.Popen, log: str, timeout: float = 300) -> tuple[int, str, str]:
    try:
        driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return driver.returncode, (folder / f"{log}.out").read_text(), (folder / f"{log}.err").read_text()


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_sweep_whose_every_trial_fails_exits_with_one_line_and_its_runs_failed(ray_env, digits_root, tmp_path):
    roots = [not_digits(tmp_path, "a"), not_digits(tmp_path, "b")]
    path = write_sweep(tmp_path, digits_root, space={"model.width": {"grid": [32]}, "data.root": {"grid": roots}},
                       max_concurrent=2)
    code, stdout, stderr = finish(tmp_path, start(tmp_path, path, ray_env, "driver"), "driver")
    assert code == 2, stderr[-3000:]  # a bad input: README's exit code 2
    said = errors(stderr)
    assert len(said) == 1, stderr[-3000:]
    assert said[0].startswith("error: all 2 trials of sweep tiny failed; the first (") and NOT_DIGITS in said[0]
    assert f"{roots[0]} {NOT_DIGITS}" in said[0]  # the first trial's, in grid order
    traceback = Path(said[0].split("(its traceback: ")[1].rstrip(")"))
    assert traceback.name == "error.txt" and "DataError" in traceback.read_text()
    assert "Traceback" not in stderr and '"parent_run_id"' not in stdout  # no crash, nor Tune's, no summary
    (parent,), children = runs(tmp_path)
    assert parent.info.status == "FAILED" and parent.data.tags["failure_reason"] == said[0].removeprefix("error: ")
    assert len(children) == 2 and all(c.info.status == "FAILED" for c in children)
    assert sorted(c.data.tags["failure_reason"] for c in children) == [f"{r} {NOT_DIGITS}; point data.root at an "
                                                                       "empty or new folder" for r in roots]


@pytest.mark.slow
def test_some_trials_failing_leave_the_best_of_the_others_and_a_second_driver_is_refused(ray_env, digits_root,
                                                                                         tmp_path):
    """One trial trains, one fails: the sweep finishes (exit 0) with the trained one's lr as the best, saying one
    failed. While it runs, a second driver of the same sweep exits 2 at once naming the first."""
    bad = not_digits(tmp_path, "bad")
    path = write_sweep(tmp_path, digits_root, space={"model.width": {"grid": [32]},
                                                     "data.root": {"grid": [str(digits_root), bad]}},
                       max_concurrent=2, overrides={"train.total_steps": STEPS // 2})
    first = start(tmp_path, path, ray_env, "first")
    try:
        holder = tmp_path / "ray_results" / "sweeps" / "tiny" / ".mupvit.lock.holder"
        deadline = time.monotonic() + 120
        while not holder.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first driver never took the lock"
            time.sleep(0.1)
        t0 = time.monotonic()
        code, _, stderr = finish(tmp_path, start(tmp_path, path, ray_env, "second"), "second", timeout=120)
        assert code == 2 and time.monotonic() - t0 < 60, stderr[-3000:]
        assert first.poll() is None, "the first driver ended before the second was refused: nothing was tested"
        (said,) = errors(stderr)
        assert said.startswith(f"error: sweep tiny: {holder.parent} is in use by pid {first.pid} on "), said
        assert "connecting" not in stderr  # refused before any cluster work
    finally:
        code, stdout, stderr = finish(tmp_path, first, "first")
    assert code == 0, stderr[-3000:]
    assert f"sweep tiny: 2 trials (1 failed), {STEPS // 2} trial-steps" in stdout
    assert any(line.startswith("orchestration: trial ") and f"failed: {bad} {NOT_DIGITS}" in line
               for line in stderr.splitlines())
    (parent,), children = runs(tmp_path)
    assert parent.info.status == "FINISHED" and "failure_reason" not in parent.data.tags
    by_root = {c.data.params["data.root"]: c for c in children}
    assert by_root[str(digits_root)].info.status == "FINISHED" and by_root[bad].info.status == "FAILED"
    assert by_root[bad].data.tags["failure_reason"].startswith(f"{bad} {NOT_DIGITS}")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    best = client.download_artifacts(parent.info.run_id, "best_lr.csv", str(tmp_path))
    assert float(Path(best).read_text().splitlines()[1].split(",")[3]) == 2e-3  # the trained trial's lr (the base)
    assert not holder.exists()  # the lock went with the first driver


def test_an_unwritable_storage_path_is_refused_before_any_cluster_work(digits_root, tmp_path, immutable_dir,  # noqa: F811
                                                                       capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # were Ray reached first, it would say it cannot be reached
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = write_sweep(tmp_path / "sweep", digits_root)
    storage = immutable_dir / "ray_results"
    assert sweep_main([str(path), "--set", f"cluster.storage_path={storage}"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"error: cluster.storage_path: cannot write to {storage} (Operation not permitted); "
                            "choose a writable folder, nothing was started\n")
    assert not (tmp_path / "mlflow.db").exists()  # before the tracking store too
