"""Sweeps: invalid files fail before any trial; a tiny Optuna + ASHA sweep on a real Ray head records a parent
and one nested child run per trial; a sweep whose driver was killed resumes without duplicate runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mupvit.config import ConfigError
from orchestration.sweep import search_algorithm, tune_space
from orchestration.sweep_spec import load_sweep

from .helpers import ended_at_exit, freeze, tiny_experiment

REPO = Path(__file__).resolve().parent.parent
STEPS = 16


def write_sweep(folder: Path, digits_root: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    experiment = tiny_experiment(digits_root, folder / "unused", **{
        "train.total_steps": STEPS, "train.log_every": 1, "train.eval_every": None, "evals": {},
        "train.ckpt_every": 4, "data.mixup_alpha": 0.0, "tracking.experiment": "sweeps", "model.base_width": 32})
    (folder / "base.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    sweep = {"name": "tiny", "base": str(folder / "base.yaml"),
             "space": {"model.width": {"grid": [32, 64]}, "optim.lr": {"log2_grid": [-8, 1]},
                       "model.parametrization": {"choice": ["mup"]}},
             "search": {"algorithm": "grid"}, "metric": "train/loss_avg", "mode": "min", "num_samples": 1,
             "max_concurrent": 1, "trial_cpus": 1, **fields}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


# ---------------------------------------------------------------- invalid sweep files (no cluster needed)


@pytest.mark.parametrize("fields, message", [
    ({"searh": {}}, "unknown key(s) searh"),
    ({"space": {"optim.lr": {"grid": [0.001, 0.0]}}}, "learning rates must be > 0"),
    ({"space": {"model.width": {"grid": [32, 40]}}}, "model.width=40): model.width: 40 is not a multiple of the head"),
    ({"space": {"optim.lrr": {"grid": [0.1]}}}, "unknown key(s) lrr"),
    ({"space": {"optim.lr": {"between": [1, 2]}}}, "expected one of {grid | log2_grid"),
    ({"space": {"optim.lr": {"loguniform": [0.1, 0.01]}}}, "expected [low, high] with low < high"),
    ({"search": {"algorithm": "bayes"}}, "search.algorithm: got 'bayes'"),
    ({"scheduler": {"type": "asha", "grace_period": 16}}, "grace_period: 16 steps is not below the trials' 16"),
    ({"base": "/nonexistent.yaml"}, "base: experiment file /nonexistent.yaml not found"),
    ({"max_concurrent": 0}, "max_concurrent: got 0"),
], ids=["unknown-key", "lr<=0", "width-off-rule", "unknown-config-key", "bad-domain", "bad-range", "bad-algorithm",
        "grace-too-long", "missing-base", "no-concurrency"])
def test_invalid_sweep_files_fail_before_any_trial(digits_root, tmp_path, fields, message):
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path, digits_root, **fields))
    assert message in str(info.value)


def test_cli_refuses_an_invalid_sweep_in_seconds(digits_root, tmp_path):
    path = write_sweep(tmp_path, digits_root, space={"optim.lr": {"grid": [-1.0]}})
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "orchestration.sweep", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "learning rates must be > 0" in done.stderr
    assert time.monotonic() - t0 < 60 and not (tmp_path / "mlflow.db").exists()


def test_shipped_sweep_files_are_valid():
    for path in sorted((REPO / "experiments/sweeps").glob("*.yaml")):
        spec = load_sweep(path)
        assert spec.name == path.stem and spec.space


# ---------------------------------------------------------------- on a real Ray head (the session's shared one:
# tests/conftest.py's ray_env hands it over idle, with its 2 CPUs free)


def sweep(folder: Path, path: Path, env: dict, *args: str, timeout: float = 400) -> dict:
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "orchestration.sweep", str(path), *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def runs(folder: Path) -> tuple[list, list]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    parents = [r for r in found if r.data.tags.get("sweep_role") == "parent"]
    return parents, [r for r in found if "mlflow.parentRunId" in r.data.tags]


def optuna_suggestions(path: Path, n: int = 4) -> list[dict]:
    spec = load_sweep(path)
    searcher = search_algorithm(spec)
    searcher.set_search_properties("train/loss_avg", "min", tune_space(spec))
    return [searcher.suggest(f"t{i}") for i in range(n)]


@pytest.mark.slow
def test_tiny_optuna_asha_sweep(ray_env, digits_root, tmp_path):
    fields = {"num_samples": 4, "scheduler": {"type": "asha", "grace_period": 4, "reduction_factor": 2}}
    # A seed whose first trial is good and which tries the bad lr later, so ASHA has something to compare with.
    for seed in range(50):
        path = write_sweep(tmp_path, digits_root, search={"algorithm": "optuna", "seed": seed}, **fields)
        lrs = [s["optim.lr"] for s in optuna_suggestions(path)]
        if lrs[0] < 1 and 2.0 in lrs:
            break
    summary = sweep(tmp_path, path, ray_env, "--transfer-to", str(REPO / "experiments/vit_s16_i1k_90ep.yaml"))
    (parent,), children = runs(tmp_path)
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.tags["search"] == "optuna"
    assert all(c.data.tags["sweep"] == "tiny" and c.data.tags["trial_id"] for c in children)
    assert all(c.data.params["model.base_width"] == "32" for c in children)  # same params as a single run
    # The Optuna searcher chose the trials: its seed reproduces them (TPE samples at random at first).
    expected = optuna_suggestions(path)
    by_trial = sorted(children, key=lambda c: c.info.start_time)  # one trial at a time, in the order suggested
    assert [(int(c.data.params["model.width"]), float(c.data.params["optim.lr"])) for c in by_trial] == \
        [(e["model.width"], e["optim.lr"]) for e in expected]
    # lr = 2 is deliberately bad: a good trial ran first, so ASHA stops every lr = 2 trial at its first rung (it
    # may stop the weaker of two good trials too: that is ASHA's halving).
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = {c.info.run_id: max((m.step for m in client.get_metric_history(c.info.run_id, "train/loss")), default=0)
             for c in children}
    bad = [c for c in children if float(c.data.params["optim.lr"]) == 2.0]
    assert bad and all(steps[c.info.run_id] < STEPS for c in bad)
    stopped = [c for c in children if steps[c.info.run_id] < STEPS]
    assert all(c.data.tags.get("early_stopped") == "true" for c in stopped)
    assert any(steps[c.info.run_id] == STEPS for c in children)  # the first, good trial ran to the end
    assert summary["trial_steps"] < 4 * STEPS
    assert "--set" in summary["transfer_command"] and "model.parametrization=mup" in summary["transfer_command"]


@pytest.mark.slow
def test_multi_worker_trials_release_their_workers_when_asha_stops_them(ray_env, digits_root, tmp_path):
    """Each trial is a 2-worker Ray Train run inside the Tune trial (Train V2 in Tune): the bad lr is stopped
    early, and the trial after it still gets the cluster's CPUs, so the stopped trial's workers were released."""
    # ASHA's one rung at step 4 (grace_period), far below the trials' end: Tune's stop reaches a 2-worker trial
    # a second or more after its report, and at 8 steps the stopped trial had once run to its end meanwhile.
    steps = 40
    path = write_sweep(tmp_path, digits_root, space={"model.width": {"grid": [32]},
                                                     "optim.lr": {"log2_grid": [-8, 1, -8]}},
                       scheduler={"type": "asha", "grace_period": 4, "reduction_factor": 2},
                       trial_workers=2, trial_cpus=2, overrides={"train.total_steps": steps, "train.ckpt_every": 20,
                                                                     "train.log_every": 4})
    summary = sweep(tmp_path, path, ray_env)
    (parent,), children = runs(tmp_path)
    assert summary["trials"] == 3 and len(children) == 3 and summary["errored"] == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    good, bad, again = sorted(children, key=lambda c: c.data.tags["trial_id"])  # Tune numbers trials in grid order
    # max_concurrent: 1 holds even though a multi-worker trial's driver reserves no CPU: one trial at a time.
    last_logged = max(m.timestamp for m in client.get_metric_history(good.info.run_id, "train/loss"))
    assert last_logged <= bad.info.start_time < again.info.start_time
    ran = [max(m.step for m in client.get_metric_history(c.info.run_id, "train/loss")) for c in (good, bad, again)]
    assert all(c.data.tags["devices"] == "2" and c.data.params["cluster.num_workers"] == "2" for c in children)
    assert float(bad.data.params["optim.lr"]) == 2.0 and bad.data.tags.get("early_stopped") == "true"
    # The good lr's trials run to the end (ASHA lets a trial equal to the best through); the one after the
    # stopped trial could only start once the stopped trial's workers gave their CPUs back.
    assert ran == [steps, ran[1], steps] and ran[1] < steps
    assert again.info.status == "FINISHED"


@pytest.mark.slow
def test_a_sweep_storage_that_does_not_restore_fails_naming_it_and_ends_the_parent_run(ray_env, digits_root, tmp_path):
    """The storage is a trust boundary (Tuner.restore unpickles it): a tuner.pkl that is not Tune's is an error
    naming the folder, not a fresh start over someone else's files, and the parent run does not stay RUNNING."""
    path = write_sweep(tmp_path, digits_root)
    stored = tmp_path / "ray_results" / "sweeps" / "tiny"
    stored.mkdir(parents=True)
    (stored / "tuner.pkl").write_bytes(b"not a pickle of Tune's")
    env = {**ray_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "orchestration.sweep", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and f"cannot resume sweep tiny from {stored}" in errors[0] and "move it away" in errors[0]
    (parent,), children = runs(tmp_path)
    assert parent.info.status == "FAILED" and children == []
    assert (stored / "tuner.pkl").read_bytes() == b"not a pickle of Tune's"  # nothing of theirs removed


def trial_number(run) -> int:
    return int(run.data.tags["trial_id"].rsplit("_", 1)[1])


@pytest.mark.slow
def test_ctrl_c_then_a_killed_driver_and_the_same_command_resumes_the_sweep(ray_head, ray_env, digits_root,
                                                                           tmp_path):
    """Ctrl-C while the first trial trains: exit 130 and one line, the parent run and the running trial KILLED (not
    early-stopped), no best lr (SIGTERM takes the same handler: tests/test_signals.py). Then the resumed sweep's
    driver is killed (SIGKILL, no cleanup) once it has finished that trial and started the second; the third run
    resumes the second trial, runs the first no more, and makes no duplicate runs."""
    path = write_sweep(tmp_path, digits_root, space={"model.width": {"grid": [32]},
                                                     "optim.lr": {"log2_grid": [-8, -7]}})
    env = {**ray_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])

    def children() -> list:
        try:
            return runs(tmp_path)[1]
        except Exception:  # the store is still being created by the driver
            return []

    stops = ((signal.SIGINT, lambda found: len(found) == 1 and found[0].info.status == "RUNNING"),
             # The second trial started, so Tune has ended the first; the second trains for a second or two (the
             # first's actor reused), and is frozen within a poll of its start.
             (signal.SIGKILL, lambda found: len(found) == 2))
    for sig, ready in stops:
        out, err = (open(tmp_path / f"driver_{sig.name}.{kind}", "w+") for kind in ("out", "err"))  # never a full pipe
        with out, err:
            with ended_at_exit(subprocess.Popen([sys.executable, "-m", "orchestration.sweep", str(path)],
                                                cwd=tmp_path, env=env, stdout=out, stderr=err,
                                                start_new_session=True)) as driver:
                deadline = time.monotonic() + 240
                while not ready(children()):
                    assert driver.poll() is None, f"the sweep ended before {sig.name}"
                    assert time.monotonic() < deadline, f"no trial to stop within 240 s ({sig.name})"
                    time.sleep(0.05)
                freeze(ray_head, "ray::ImplicitFunc", tmp_path / "mlflow.db")
                os.killpg(driver.pid, sig)  # Ctrl-C reaches the terminal's whole process group
                driver.wait(timeout=120)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if sig == signal.SIGKILL:
            break
        assert driver.returncode == 130, stderr[-3000:]
        said = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
        assert len(said) == 1 and "sweep tiny is stopped and marked KILLED in MLflow" in said[0], stderr[-3000:]
        assert "run the same command to resume it" in said[0]
        for noise in ("Traceback", "SIGTERM received", "Tuner.restore", "Stop signal received"):
            assert noise not in stderr, (noise, stderr[-3000:])
        assert "best lr" not in stdout and '"parent_run_id"' not in stdout  # no result, no summary
        (parent,), found = runs(tmp_path)
        assert parent.info.status == "KILLED", sig.name
        assert {trial_number(c): c.info.status for c in found} == {0: "KILLED"}  # Tune numbers trials in grid order
        assert not any(c.data.tags.get("early_stopped") for c in found)
    _, found = runs(tmp_path)
    first = next(c for c in found if trial_number(c) == 0)
    assert first.info.status == "FINISHED"  # by the resumed driver, before it was killed
    first_logged = len(client.get_metric_history(first.info.run_id, "train/loss"))
    summary = sweep(tmp_path, path, ray_env)  # the same command once more: resumes and finishes
    (parent,), found = runs(tmp_path)
    assert parent.info.status == "FINISHED" and summary["trials"] == 2 and summary["errored"] == 0
    assert len(found) == 2 and all(c.info.status == "FINISHED" for c in found)  # no duplicate runs
    assert len(client.get_metric_history(first.info.run_id, "train/loss")) == first_logged  # not run again
    assert [row["trials"] for row in summary["best"]] == [2]  # the best lr, from both trials
