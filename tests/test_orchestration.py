"""orchestration.train on a real Ray head (127.0.0.1) with a real MLflow SQLite store: `ray job submit`, data
parallel equivalence, worker failure, driver death, and bad inputs that must fail fast and leave nothing behind.

The head is the session's shared one (tests/conftest.py: ray_head, and ray_env, which waits until it is idle)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from orchestration.loopback import BIN, cluster_env
from orchestration.tracking import RESOLVED_ARTIFACT, read_resolved

from .helpers import tiny_experiment
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


@pytest.fixture(scope="module")
def reference(ray_head, digits_root, tmp_path_factory):
    """One uninterrupted 1-worker run that the other tests compare with."""
    folder = tmp_path_factory.mktemp("reference")
    ray_head.wait_idle()  # as ray_env does (a module's fixture cannot use that function-scoped one)
    summary = summary_of(orchestrate(folder, write_config(folder, digits_root), ray_head.env(),
                                     "tracking.run_name=ref"))
    return folder, summary


# ---------------------------------------------------------------- the happy path, through `ray job submit`


def test_ray_job_submit_runs_and_mlflow_records_it(ray_head, ray_env, digits_root, tmp_path):
    config = write_config(tmp_path, digits_root, **{"train.total_steps": 8, "train.eval_every": 4,
                                                    "train.log_every": 2, "train.eval_at_epochs": [0.1]})
    summary_path = tmp_path / "summary.json"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                "MUPVIT_GIT_COMMIT": "abc123"}}
    done = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", "orchestration.train", str(config),
         "--set", f"cluster.storage_path={tmp_path / 'ray_results'}", "--summary-json", str(summary_path)],
        env=cluster_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
    # The job's console: the project's progress lines and the result, not Ray's or MLflow's INFO chatter.
    assert "[step 8/8 100.0%]" in done.stdout and "final val: top-1" in done.stdout
    for chatter in ("Reporting training result", "Checkpoint successfully created", "Requesting resources",
                    "INFO mlflow"):
        assert chatter not in done.stdout, chatter
    worker_lines = [line for line in done.stdout.splitlines() if "(RayTrainWorker pid=" in line]
    assert worker_lines and not any("\x1b[" in line for line in worker_lines)  # plain prefixes (the CLI's own
    # lines keep Ray's colours)
    (run,) = runs_in(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.002" and run.data.params["model.width"] == "32"
    assert run.data.params["train.devices"] == "1" and run.data.params["cluster.num_workers"] == "1"
    tags = run.data.tags
    assert tags["dataset"] == "digits" and tags["parametrization"] == "sp" and tags["num_workers"] == "1"
    assert tags["git_commit"] == "abc123"  # no .git in a job's working dir: the submit command passes it
    assert "mupvit.paper_acc1" not in tags  # digits has no paper number
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4, 6, 8]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc1")] == [4, 8]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")] == [2, 4, 6, 8]
    # 0.1 epochs of 1,438 images at batch 32 is step round(4.49) = 4.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc1_at_0.1ep")] == [4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "console.log", RESOLVED_ARTIFACT} <= artifacts
    resolved = read_resolved(client, run.info.run_id)  # typed, derived values included
    assert resolved["config"]["optim"]["lr"] == 0.002 and resolved["config"]["evals"]["val"]["split"] == "val"
    assert resolved["launch"]["cluster"]["num_workers"] == 1
    derived = resolved["derived"]
    assert (derived["width"], derived["num_heads"], derived["mlp_dim"], derived["depth"]) == (32, 2, 64, 1)
    assert derived["total_steps"] == 8 and derived["devices"] == 1 and derived["train_images"] == 1438
    assert derived["epochs"] == pytest.approx(8 * 32 / 1438)
    assert json.loads(summary_path.read_text())["mlflow_run_id"] == run.info.run_id
    # Submitted again after the data moved to another disk and with other logging: the same run, already finished.
    moved = tmp_path / "moved_digits"
    shutil.copytree(digits_root, moved)
    again = summary_of(orchestrate(tmp_path, config, ray_env, f"data.root={moved}", "train.log_every=1",
                                   f"cluster.storage_path={tmp_path / 'ray_results'}"))
    assert again["already_finished"] and again["mlflow_run_id"] == run.info.run_id


def test_paper_reference_tag_for_the_headline_recipe():
    from mupvit.config import load_config
    from mupvit.results import paper_acc1

    assert paper_acc1(load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml")) == 76.7
    assert paper_acc1(load_config(REPO / "experiments/vit_s16_i1k_90ep_mlp_head.yaml")) == 76.5
    assert paper_acc1(load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml", ["optim.lr=2e-3"])) is None


# ---------------------------------------------------------------- data parallel and failures


def test_two_workers_match_one_worker(two_worker_run, reference):
    (folder, summary), (ref_folder, ref) = two_worker_run, reference
    two, one = loss_history(folder, summary["mlflow_run_id"]), loss_history(ref_folder, ref["mlflow_run_id"])
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([two[s][0] for s in sorted(two)]),
                               torch.tensor([one[s][0] for s in sorted(one)]), rtol=1e-5, atol=1e-5)
    (run,) = runs_in(folder)
    assert run.data.tags["num_workers"] == "2" and run.data.params["train.devices"] == "2"


def test_worker_failure_restarts_from_checkpoint_and_loses_nothing(ray_env, digits_root, tmp_path, reference):
    _, ref = reference
    done = orchestrate(tmp_path, write_config(tmp_path, digits_root), ray_env,
                       "cluster.fail_at_step=6", "tracking.run_name=flaky")
    summary = summary_of(done)
    assert "injected failure at step 6" in done.stderr
    (run,) = runs_in(tmp_path)  # one MLflow run across the restart
    assert run.info.status == "FINISHED"
    history = loss_history(tmp_path, run.info.run_id)
    assert sorted(history) == list(range(1, STEPS + 1))
    assert all(len(set(values)) == 1 for values in history.values())  # any re-logged step carries the same values
    a, b = final_model(summary), final_model(ref)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


def test_driver_killed_then_resubmitted_resumes(ray_env, digits_root, tmp_path, reference):
    _, ref = reference
    config = write_config(tmp_path, digits_root)
    sets = ["--set", "tracking.run_name=killed", "--set", "cluster.fail_at_step=13"]  # fails once: a slow window
    env = {**ray_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    driver = subprocess.Popen([sys.executable, "-m", "orchestration.train", str(config), *sets], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    storage = tmp_path / "ray_results" / "killed"
    deadline = time.monotonic() + 240
    while not (storage / "injected_failure.done").exists():  # past step 12's checkpoint, restarting workers
        assert driver.poll() is None, "the driver ended before it could be killed"
        assert time.monotonic() < deadline, "no progress within 240 s"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert list(storage.glob("checkpoint_*"))
    summary = summary_of(orchestrate(tmp_path, config, ray_env, "tracking.run_name=killed",
                                     "cluster.fail_at_step=13"))
    (run,) = runs_in(tmp_path)
    assert run.info.status == "FINISHED"
    assert sorted(loss_history(tmp_path, run.info.run_id)) == list(range(1, STEPS + 1))
    a, b = final_model(summary), final_model(ref)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key
    # The same command once more: already finished, nothing reruns.
    again = orchestrate(tmp_path, config, ray_env, "tracking.run_name=killed", "cluster.fail_at_step=13")
    assert summary_of(again)["already_finished"] and len(runs_in(tmp_path)) == 1


def test_ray_data_input_interrupted_and_resumed_ends_on_the_local_runs_parameters(ray_env, digits_root, tmp_path,
                                                                                  reference):
    """data.pipeline ray_data: the batches come from Ray Data tasks on the head's free CPU; a worker failure at step
    6 resumes from step 4's checkpoint with a dataset that starts there, and the run ends on the parameters of the
    uninterrupted local run, bit for bit."""
    _, ref = reference
    done = orchestrate(tmp_path, write_config(tmp_path, digits_root, **{"data.pipeline": "ray_data"}), ray_env,
                       "cluster.fail_at_step=6", "tracking.run_name=raydata")
    summary = summary_of(done)
    assert "injected failure at step 6" in done.stderr
    assert "[step 20/20 100.0%]" in done.stderr and "Dataset" not in done.stderr  # no Ray Data chatter
    a, b = final_model(summary), final_model(ref)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


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


# ---------------------------------------------------------------- stopped by the user


def test_sigterm_and_ctrl_c_stop_the_run_as_killed_and_free_its_workers(ray_head, ray_env, digits_root, tmp_path):
    config = write_config(tmp_path, digits_root, **{"train.total_steps": 100_000})  # runs until stopped
    env = {**ray_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    storage = tmp_path / "ray_results" / "stopped"
    for sig in (signal.SIGTERM, signal.SIGINT):  # `kill` / `ray job stop`, then Ctrl-C on the resumed run
        before = set(storage.glob("checkpoint_*"))
        with open(tmp_path / f"driver_{sig.name}.err", "w+") as err:
            driver = subprocess.Popen([sys.executable, "-m", "orchestration.train", str(config), "--set",
                                       "tracking.run_name=stopped"], cwd=tmp_path, env=env,
                                      stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            deadline = time.monotonic() + 240
            while not set(storage.glob("checkpoint_*")) - before:  # training, with a checkpoint of this driver's
                assert driver.poll() is None, f"the driver ended before {sig.name}"
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.2)
            if sig == signal.SIGTERM:  # mid-training: every process of the run listens on loopback only
                assert_run_on_loopback(ray_head, driver.pid)
            driver.send_signal(sig)
            assert driver.wait(timeout=120) == 130
            err.seek(0)
            stderr = err.read()
        assert "marked KILLED in MLflow; run the same command to resume" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr[-3000:]
        (run,) = runs_in(tmp_path)  # the resumed driver found the same MLflow run
        assert run.info.status == "KILLED", sig.name
        ray_head.wait_idle(timeout_s=60)  # its workers went with it: the head's CPUs are free
