"""orchestration.train on a real Ray head (127.0.0.1) with a real MLflow SQLite store: data parallel
equivalence, worker failure, driver death, and bad inputs that must fail fast and leave nothing behind.

The head is the session's shared one (tests/conftest.py: ray_head, and ray_env, which waits until it is idle)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from .helpers import ended_at_exit, freeze, tiny_experiment
from .test_security import assert_run_on_loopback

REPO = Path(__file__).resolve().parent.parent
STEPS = 20

pytestmark = pytest.mark.slow


def write_config(folder: Path, digits_root: Path, **overrides) -> Path:
    """The tiny digits run as a YAML experiment file: no MixUp (so data parallel is exactly equivalent)."""
    settings = {"train.total_steps": STEPS, "train.log_every": 1, "train.eval_every": 10, "train.ckpt_every": 4,
                "data.mixup_alpha": 0.0, "cluster.cpus_per_worker": 1, "tracking.experiment": "test", **overrides}
    experiment = tiny_experiment(digits_root, folder / "unused", **settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def orchestrate(folder: Path, config: Path, env: dict, *sets: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = [arg for s in sets for arg in ("--set", s)]
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "orchestration.train", str(config), *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)


def summary_of(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def runs_in(folder: Path, experiment: str = "test") -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def loss_history(folder: Path, run_id: str) -> dict[int, list[float]]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    history: dict[int, list[float]] = {}
    for m in client.get_metric_history(run_id, "train/loss"):
        history.setdefault(m.step, []).append(m.value)
    return history


def final_model(summary: dict) -> dict:
    return torch.load(Path(summary["checkpoint"]) / "checkpoint.pt", weights_only=True)["model"]


def test_paper_reference_tag_for_the_headline_recipe():
    from mupvit.config import load_config
    from mupvit.results import paper_acc1

    assert paper_acc1(load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml")) == 76.7
    assert paper_acc1(load_config(REPO / "experiments/vit_s16_i1k_90ep_mlp_head.yaml")) == 76.5
    assert paper_acc1(load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml", ["optim.lr=2e-3"])) is None


# ---------------------------------------------------------------- data parallel and failures


def test_a_run_stopped_killed_and_failing_on_the_way_resumes_and_loses_nothing(ray_head, ray_env, digits_root,
                                                                                tmp_path, reference):
    """The same command four times on one run. SIGTERM (`kill`, `ray job stop`; Ctrl-C raises the same
    KeyboardInterrupt: tests/test_signals.py) once it trains with a checkpoint of its own: exit 130 and one line,
    the MLflow run KILLED, its workers freed. Then the resumed run's driver is killed (SIGKILL). The third run
    resumes; on the way a worker fails (cluster.fail_at_step) and restarts from the checkpoint: one MLflow run,
    every step logged with the same values however often, and the model of an uninterrupted run, bit for bit. The
    fourth finds the run finished and reruns nothing."""
    config = write_config(tmp_path, digits_root)
    sets = ["tracking.run_name=stopped", "cluster.fail_at_step=18"]  # fails once: in the third run, past step 16
    env = {**ray_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    storage = tmp_path / "ray_results" / "stopped"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        before = set(storage.glob("checkpoint_*"))
        with open(tmp_path / f"driver_{sig.name}.err", "w+") as err:
            with ended_at_exit(subprocess.Popen([sys.executable, "-m", "orchestration.train", str(config),
                                                 *(arg for s in sets for arg in ("--set", s))], cwd=tmp_path, env=env,
                                                stdout=subprocess.DEVNULL, stderr=err,
                                                start_new_session=True)) as driver:
                deadline = time.monotonic() + 240
                while not set(storage.glob("checkpoint_*")) - before:  # training, with a checkpoint of this driver's
                    assert driver.poll() is None, f"the driver ended before {sig.name}"
                    assert time.monotonic() < deadline, "no checkpoint within 240 s"
                    time.sleep(0.05)
                # The run cannot reach step 18, nor its end, before the stop (frozen outside its MLflow writes).
                freeze(ray_head, "ray::RayTrainWorker", tmp_path / "mlflow.db")
                if sig == signal.SIGTERM:  # mid-training: every process of the run listens on loopback only
                    assert_run_on_loopback(ray_head, driver.pid)
                if sig == signal.SIGKILL:  # the driver dies with no cleanup
                    os.killpg(driver.pid, sig)
                else:
                    driver.send_signal(sig)
                driver.wait(timeout=120)
            err.seek(0)
            stderr = err.read()
        if sig == signal.SIGKILL:
            break
        assert driver.returncode == 130, stderr[-3000:]
        assert "marked KILLED in MLflow; run the same command to resume" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr[-3000:]
        (run,) = runs_in(tmp_path)  # the resumed driver found the same MLflow run
        assert run.info.status == "KILLED", sig.name
        ray_head.wait_idle(timeout_s=60)  # its workers went with it: the head's CPUs are free
    done = orchestrate(tmp_path, config, ray_env, *sets)
    summary = summary_of(done)
    # A worker failed once at step 18: in the third run, or in the second when its workers outran the freeze (a
    # step takes ~35 ms), and the restart then resumed there. The marker is the one-shot's record, either way.
    assert int((storage / "injected_failure.done").read_text()) >= 18
    (run,) = runs_in(tmp_path)  # one MLflow run across the stops, the killed driver and the restart
    assert run.info.status == "FINISHED"
    history = loss_history(tmp_path, run.info.run_id)
    assert sorted(history) == list(range(1, STEPS + 1))
    assert all(len(set(values)) == 1 for values in history.values())  # any re-logged step carries the same values
    a, b = final_model(summary), reference  # the trainer alone, in one process
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key
    # The same command once more: already finished, nothing reruns, nor connects to Ray or probes the data.
    again = orchestrate(tmp_path, config, ray_env, *sets)
    assert summary_of(again)["already_finished"] and len(runs_in(tmp_path)) == 1
    assert "connecting" not in again.stderr and "already finished" in again.stderr, again.stderr[-2000:]


# ---------------------------------------------------------------- bad input: fast, clear, nothing left behind


@pytest.mark.parametrize("sets, message", [
    (["model.widht=64"], "unknown key(s) widht"),
    (["tracking.uri=http://127.0.0.1:9"], "MLflow tracking server http://127.0.0.1:9 is not reachable"),
    (["cluster.use_gpu=true"], "the cluster has 0 GPU in all"),
    (["cluster.num_workers=4"], "cluster.num_workers=4 x 1 CPU per worker needs 4"),
    (["data.dataset=imagefolder", "data.root=/nonexistent/imagenet"], "on a worker node"),
], ids=["unknown-key", "unreachable-tracking", "no-gpu", "too-many-workers", "missing-dataset"])
def test_bad_input_fails_fast_without_an_mlflow_run(ray_env, digits_root, tmp_path, sets, message):
    t0 = time.monotonic()
    done = orchestrate(tmp_path, write_config(tmp_path, digits_root), ray_env, *sets, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr, done.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert runs_in(tmp_path) == [] if (tmp_path / "mlflow.db").exists() else True
    assert not (tmp_path / "ray_results").exists()
