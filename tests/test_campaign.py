"""orchestration.campaign: bad input fails before any cluster is contacted, the plan reads MLflow, and (slow) a
folder of two digits configs runs on a real Ray head as jobs, once: the same command again submits nothing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from orchestration import campaign
from orchestration.job_server import follow_job, housekeeping
from orchestration.launch_config import load_launch
from orchestration.tracking import RESOLVED_ARTIFACT, git_state, open_run, read_resolved
from orchestration.train import REPO, run_name

from .helpers import tiny_experiment


def write_configs(folder: Path, digits_root: Path, storage: Path, ablations: dict[str, dict]) -> None:
    """One tiny digits experiment file per ablation name, with that ablation's overrides."""
    folder.mkdir(parents=True, exist_ok=True)
    for ablation, overrides in ablations.items():
        settings = {"tracking.ablation": ablation, "tracking.experiment": "campaign_test",
                    "cluster.cpus_per_worker": 1, "cluster.storage_path": str(storage), **overrides}
        experiment = tiny_experiment(digits_root, storage.parent / "runs" / ablation, **settings)
        (folder / f"{ablation}.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))


def silent_port() -> socket.socket:
    """A listening socket that never answers: a job server that hangs, not one that refuses at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


# ---------------------------------------------------------------- fast: input checks and the plan


def test_an_invalid_config_fails_with_exit_2_before_any_cluster_is_contacted(digits_root, tmp_path, capsys):
    write_configs(tmp_path / "ablations", digits_root, tmp_path / "ray_results", {"good": {}})
    (tmp_path / "ablations" / "bad.yaml").write_text("model:\n  widht: 64\n")
    with silent_port() as server:  # were it contacted first, the error would be the job server's, after seconds
        t0 = time.monotonic()
        code = campaign.main([str(tmp_path / "ablations"), "--address",
                              f"http://127.0.0.1:{server.getsockname()[1]}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 3, err
    assert "bad.yaml" in err and "unknown key(s) widht" in err and "job server" not in err


def test_the_plan_skips_a_finished_run_and_submits_the_others(digits_root, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder = tmp_path / "ablations"
    write_configs(folder, digits_root, tmp_path / "ray_results",
                  {"done": {}, "crashed": {"model.pool": "tok"}, "fresh": {"model.head": "mlp"}})
    client = MlflowClient(uri)
    recorded = {}
    for name, status in (("done", "FINISHED"), ("crashed", "FAILED")):
        path = folder / f"{name}.yaml"
        launch = load_launch(path, base_dir=tmp_path)  # the run name orchestration.train would record
        run_id, _ = open_run(client, launch, run_name(launch), REPO)
        client.set_terminated(run_id, status)
        recorded[name] = run_id
    entries = {e.config.name: e for e in campaign.load_campaign(folder, [], tmp_path)}
    for entry in entries.values():
        campaign.decide(entry, active={})
    assert (entries["done.yaml"].action, entries["done.yaml"].reason) == ("skip", f"finished, run {recorded['done']}")
    assert entries["crashed.yaml"].action == "submit"
    assert entries["crashed.yaml"].reason == f"resumes MLflow run {recorded['crashed']}, was FAILED"
    assert (entries["fresh.yaml"].action, entries["fresh.yaml"].reason) == ("submit", "new run")
    fresh = entries["fresh.yaml"]
    campaign.decide(fresh, active={fresh.run_name: "raysubmit_x"})  # a job for it already on the cluster
    assert (fresh.action, fresh.job_id) == ("wait", "raysubmit_x")


def test_the_ablation_folder_validates_and_runs_shortest_training_first():
    entries = campaign.load_campaign(REPO / "experiments" / "ablations", [], REPO)
    names = [e.config.name for e in entries]
    assert names[-2:] == ["recipe_150ep.yaml", "recipe_300ep.yaml"] and len(names) == 8
    assert all(e.run_name.startswith(e.config.stem + "-") for e in entries)


def test_an_unreachable_job_server_fails_in_seconds_with_how_to_start_one(digits_root, tmp_path, capsys):
    write_configs(tmp_path / "ablations", digits_root, tmp_path / "ray_results", {"good": {}})
    with silent_port() as server:
        address = f"http://127.0.0.1:{server.getsockname()[1]}"
        t0 = time.monotonic()
        code = campaign.main([str(tmp_path / "ablations"), "--address", address])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 15, err
    assert f"no Ray job server answers at {address}" in err and "ray start --head" in err


# ---------------------------------------------------------------- slow: a real Ray head (the session's shared one,
# tests/conftest.py: other tests' jobs may be in its job list, never running)


def run_cli(folder: Path, cwd: Path, env: dict, dashboard: str, *sets: str) -> subprocess.CompletedProcess:
    args = [arg for s in sets for arg in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "orchestration.campaign", str(folder), "--address", dashboard, *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_campaign_runs_each_config_once_as_a_ray_job(ray_head, ray_env, digits_root, tmp_path):
    """A folder's config as a Ray job (what `ray job submit` runs: train_job_command, train_job_env), once (a folder
    of several is planned in test_the_plan_skips_a_finished_run_and_submits_the_others), checked as a job's run:
    its console, its MLflow params, tags, metric histories and resolved config; the same command again skips it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**ray_env, "MLFLOW_TRACKING_URI": uri}
    folder = tmp_path / "ablations"
    write_configs(folder, digits_root, tmp_path / "ray_results",
                  {"recipe": {"train.eval_at_epochs": [0.1]}})
    jobs = JobSubmissionClient(ray_head.dashboard_url)
    jobs_before = {j.submission_id for j in jobs.list_jobs()}

    first = run_cli(folder, tmp_path, env, ray_head.dashboard_url)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert first.stdout.count("submitted job") == 1 and first.stdout.count(" SUCCEEDED, ") == 1
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("campaign_test").experiment_id])
    assert [(r.data.tags["ablation"], r.info.status) for r in runs] == [("recipe", "FINISHED")]
    assert all("final/val/acc1" in r.data.metrics for r in runs)
    (run,) = [r for r in runs if r.data.tags["ablation"] == "recipe"]
    (job,) = [j for j in jobs.list_jobs() if j.submission_id not in jobs_before
              and (j.metadata or {}).get("mupvit_config") == "recipe.yaml"]
    # Submitting, the client printed none of Ray's packaging lines (each step at INFO; .git and .venv left out).
    assert "Uploading package" not in first.stderr and "ignored by default" not in first.stderr, first.stderr
    # The job's console: the project's progress lines and the result, not Ray's or MLflow's INFO chatter.
    console = jobs.get_job_logs(job.submission_id)
    # As `make demo` follows a job: the same log less the job manager's lines and Ray Train's PreemptionWatcher note.
    followed: list[str] = []
    assert follow_job(jobs, job.submission_id, followed.append) == JobStatus.SUCCEEDED
    assert "Running entrypoint for job" in console and "".join(followed) == "".join(
        line + "\n" for line in console.splitlines() if not housekeeping(line))
    assert not any("job_manager.py" in line or "PreemptionWatcher" in line for line in followed), followed
    assert "[step 8/8 100.0%]" in console and "final val: top-1" in console, console[-4000:]
    for chatter in ("Reporting training result", "Checkpoint successfully created", "Requesting resources",
                    "INFO mlflow"):
        assert chatter not in console, chatter
    worker_lines = [line for line in console.splitlines() if "(RayTrainWorker pid=" in line]
    assert worker_lines and not any("\x1b[" in line for line in worker_lines)  # plain prefixes
    assert run.data.params["optim.lr"] == "0.002" and run.data.params["model.width"] == "32"
    assert run.data.params["train.devices"] == "1" and run.data.params["cluster.num_workers"] == "1"
    tags = run.data.tags
    assert tags["dataset"] == "digits" and tags["parametrization"] == "sp" and tags["num_workers"] == "1"
    # No .git in a job's working dir: the submitting checkout's commit reached the job through its env.
    assert tags["git_dirty"] == "none" and tags["git_commit"].removesuffix("-dirty") == git_state(REPO)[0]
    assert "mupvit.paper_acc1" not in tags  # digits has no paper number
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

    # The same command again, after the data moved to another disk and with other logging: the same runs (the
    # run name leaves both out), already finished, so nothing is submitted.
    moved = tmp_path / "moved_digits"
    shutil.copytree(digits_root, moved)
    again = run_cli(folder, tmp_path, env, ray_head.dashboard_url, f"data.root={moved}", "train.log_every=1")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "submitted job" not in again.stdout
    for r in runs:
        assert f"skip (finished, run {r.info.run_id})" in again.stdout
    new_jobs = [j for j in jobs.list_jobs() if j.submission_id not in jobs_before]
    assert len([j for j in new_jobs if campaign.RUN_METADATA in (j.metadata or {})]) == 1
