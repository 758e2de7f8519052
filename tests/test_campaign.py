"""orchestration.campaign: bad input fails before any cluster is contacted, the plan reads MLflow, and (slow) a
folder of two digits configs runs on a real Ray head as jobs, once: the same command again submits nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.job_submission import JobSubmissionClient

from orchestration import campaign
from orchestration.launch_config import load_launch
from orchestration.tracking import open_run
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


def run_cli(folder: Path, cwd: Path, env: dict, dashboard: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.campaign", str(folder), "--address", dashboard],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_campaign_runs_each_config_once_as_a_ray_job(ray_head, ray_env, digits_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**ray_env, "MLFLOW_TRACKING_URI": uri}
    folder = tmp_path / "ablations"
    write_configs(folder, digits_root, tmp_path / "ray_results", {"recipe": {}, "pool_cls": {"model.pool": "tok"}})
    jobs_before = {j.submission_id for j in JobSubmissionClient(ray_head.dashboard_url).list_jobs()}

    first = run_cli(folder, tmp_path, env, ray_head.dashboard_url)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert first.stdout.count("submitted job") == 2
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("campaign_test").experiment_id])
    assert sorted((r.data.tags["ablation"], r.info.status) for r in runs) == [
        ("pool_cls", "FINISHED"), ("recipe", "FINISHED")]
    assert all("final/val/acc1" in r.data.metrics for r in runs)
    assert runs[0].data.tags["git_commit"] != "unknown"  # the submitting checkout's commit reached the job

    again = run_cli(folder, tmp_path, env, ray_head.dashboard_url)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "submitted job" not in again.stdout
    for run in runs:
        assert f"skip (finished, run {run.info.run_id})" in again.stdout
    jobs = [j for j in JobSubmissionClient(ray_head.dashboard_url).list_jobs() if j.submission_id not in jobs_before]
    assert len([j for j in jobs if campaign.RUN_METADATA in (j.metadata or {})]) == 2
