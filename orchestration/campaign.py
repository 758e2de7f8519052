"""Run every experiment config of a folder (an ablation campaign) as Ray jobs, each run once.

    python -m orchestration.campaign experiments/ablations/ [--set KEY=VALUE ...]
        [--address http://127.0.0.1:8265] [--parallel] [--dry-run]

All configs are loaded and validated before anything is contacted. Then, per config and its deterministic run name
(orchestration.train.run_name): FINISHED in MLflow -> skip; a Ray job for that run PENDING or RUNNING -> wait for
it; otherwise submit `python -m orchestration.train CONFIG --set ...` with this repository as the job's working
dir (a run that failed before resumes from its checkpoints). Shortest training first, one job at a time by
default: a reproduction takes the whole cluster and orchestration.train fails a job that cannot get its workers.
--parallel submits all at once (big clusters). Rerunning the same command after everything finished submits nothing.
Exit codes: 0 all finished, 1 a job failed, 2 bad input (a config, the job server, the tracking store).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from mupvit.config import Config, ConfigError, add_set_argument
from orchestration.job_server import job_client
from orchestration.launch_config import Launch, load_launch
from orchestration.tracking import check_reachable, find_run, tracking_uri
from orchestration.train import INPUT_ERRORS, REPO, run_name
from orchestration.train_job import train_job_command, train_job_env

RUN_METADATA = "mupvit_run"  # job metadata key holding the run name: how a rerun finds a job already on the cluster
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)
POLL_S = 2.0
PROGRESS_EVERY_S = 300.0  # a status line per waiting job this often, besides one at every status change


@dataclass
class Entry:
    """One config of the campaign and what happens to it."""

    config: Path
    launch: Launch  # resolved (absolute storage path, devices = workers)
    run_name: str
    uri: str  # the MLflow store the job writes to
    action: str = ""  # skip | wait | submit
    reason: str = ""
    job_id: str | None = None
    status: str = "-"
    top1: float | None = None


def say(text: str) -> None:
    print(f"campaign: {text}", flush=True)


def load_campaign(folder: Path, overrides: list[str], base_dir: Path) -> list[Entry]:
    """Every *.yaml of `folder`, validated as orchestration.train would, shortest training first; raises one of
    INPUT_ERRORS."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of experiment configs")
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise ConfigError(f"{folder}: no *.yaml experiment configs in it")
    entries, owners = [], {}
    for path in paths:
        launch = load_launch(path, overrides, base_dir)
        entry = Entry(path.resolve(), launch, run_name(launch), tracking_uri(launch.tracking, base_dir))
        if entry.run_name in owners:
            raise ConfigError(f"{path}: same run name {entry.run_name!r} as {owners[entry.run_name]}; "
                              "give one of them its own tracking.run_name")
        owners[entry.run_name] = path
        entries.append(entry)
    # Shortest schedules first: on one cluster the 90-epoch comparisons arrive before a 300-epoch run.
    return sorted(entries, key=lambda e: (e.launch.run.train.epochs if e.launch.run.train.total_steps is None else 0.0,
                                          e.config.name))


def active_jobs(client: JobSubmissionClient) -> dict[str, str]:
    """run name -> submission id of the campaign jobs PENDING or RUNNING on the cluster."""
    return {job.metadata[RUN_METADATA]: job.submission_id for job in client.list_jobs()
            if job.status in ACTIVE and RUN_METADATA in (job.metadata or {})}


def recorded_run(entry: Entry) -> Run | None:
    """The MLflow run of this entry, read-only (a SQLite store that does not exist yet holds no run)."""
    if entry.uri.startswith("sqlite:///") and not Path(entry.uri.removeprefix("sqlite:///")).exists():
        return None
    client = MlflowClient(entry.uri)
    experiment = client.get_experiment_by_name(entry.launch.tracking.experiment)
    return find_run(client, experiment.experiment_id, entry.run_name) if experiment else None


def top1_of(run: Run, cfg: Config) -> float | None:
    """The headline evaluator's final top-1 (a fraction), as orchestration.tracking records it."""
    headline = cfg.headline()
    return run.data.metrics.get(f"final/{headline}/acc1") if headline else None


def decide(entry: Entry, active: dict[str, str]) -> None:
    """Set entry.action: skip a finished run, wait for a job already on the cluster, else submit."""
    run = recorded_run(entry)
    if run is not None and run.info.status == "FINISHED":
        entry.action, entry.reason = "skip", f"finished, run {run.info.run_id}"
        entry.top1 = top1_of(run, entry.launch.run)
    elif entry.run_name in active:
        entry.action, entry.job_id = "wait", active[entry.run_name]
        entry.reason = f"job {entry.job_id} already on the cluster"
    else:
        entry.action = "submit"
        entry.reason = "new run" if run is None else f"resumes MLflow run {run.info.run_id}, was {run.info.status}"


def job_config_path(config: Path) -> str:
    """The config as the job sees it: repo-relative inside the uploaded working dir, else absolute (one machine)."""
    return str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config)


def submit(client: JobSubmissionClient, entry: Entry, overrides: list[str]) -> None:
    # The storage path made absolute against this directory: the job's own cwd is a temporary copy.
    sets = [*overrides, f"cluster.storage_path={entry.launch.cluster.storage_path}"]
    entry.job_id = client.submit_job(
        entrypoint=shlex.join(train_job_command(job_config_path(entry.config), sets)),
        runtime_env={"working_dir": str(REPO), "env_vars": train_job_env(REPO, entry.uri)},
        metadata={RUN_METADATA: entry.run_name, "mupvit_config": entry.config.name},
    )
    say(f"{entry.config.name}: submitted job {entry.job_id} (run {entry.run_name})")


def wait_for(client: JobSubmissionClient, entries: list[Entry]) -> None:
    """Poll the entries' jobs until each ends; a line per status change and every PROGRESS_EVERY_S."""
    waiting, last_line = list(entries), {}
    while waiting:
        for entry in list(waiting):
            info = client.get_job_info(entry.job_id)
            status, now = str(info.status.value), time.time()
            started = info.start_time / 1000 if info.start_time else now
            if status != entry.status or now - last_line.get(entry.job_id, 0.0) >= PROGRESS_EVERY_S:
                elapsed = time.strftime("%H:%M:%S", time.gmtime(now - started))
                say(f"{entry.config.name}: job {entry.job_id} {status}, {elapsed} elapsed")
                entry.status, last_line[entry.job_id] = status, now
            if info.status.is_terminal():
                waiting.remove(entry)
                finished(client, entry, info.status)
        if waiting:
            time.sleep(POLL_S)


def finished(client: JobSubmissionClient, entry: Entry, status: JobStatus) -> None:
    if status == JobStatus.SUCCEEDED:
        run = recorded_run(entry)
        entry.top1 = top1_of(run, entry.launch.run) if run is not None else None
        return
    tail = "\n".join(client.get_job_logs(entry.job_id).splitlines()[-30:])
    print(f"error: {entry.config.name}: job {entry.job_id} {status.value}; the end of its log:\n{tail}",
          file=sys.stderr, flush=True)


def run_campaign(client: JobSubmissionClient, entries: list[Entry], overrides: list[str], parallel: bool) -> None:
    if parallel:
        for entry in entries:
            if entry.action == "submit":
                submit(client, entry, overrides)
        wait_for(client, [e for e in entries if e.action != "skip"])
        return
    for entry in entries:
        decide(entry, active_jobs(client))  # again: the previous job may have taken hours
        if entry.action == "skip":
            say(f"{entry.config.name}: skip ({entry.reason})")
            continue
        if entry.action == "submit":
            submit(client, entry, overrides)
        wait_for(client, [entry])


def table(entries: list[Entry]) -> str:
    rows = [("config", "run name", "action", "job status", "top-1")]
    rows += [(e.config.name, e.run_name, e.action, e.status, "-" if e.top1 is None else f"{100 * e.top1:.2f}%")
             for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of experiment YAML files, e.g. experiments/ablations/")
    add_set_argument(parser, "data.root=/data/imagenet", "a value in every config")
    parser.add_argument("--address", default="http://127.0.0.1:8265", help="the Ray dashboard (job server) URL")
    parser.add_argument("--parallel", action="store_true", help="submit every job at once instead of one by one")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    args = parser.parse_args(argv)
    try:
        entries = load_campaign(args.folder, args.overrides, Path.cwd())
        client = job_client(args.address)
        for uri in sorted({e.uri for e in entries}):
            check_reachable(uri)
        active = active_jobs(client)
        for entry in entries:
            decide(entry, active)
            say(f"plan: {entry.config.name}: {entry.action} ({entry.reason})")
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    try:
        run_campaign(client, entries, args.overrides, args.parallel)
    except KeyboardInterrupt:
        print("\ncampaign: interrupted; submitted jobs keep running on the cluster: rerun the same command to wait "
              "for them, or stop one with `ray job stop <id>`", file=sys.stderr)
        return 130
    print("\n" + table(entries))
    failed = [e for e in entries if e.action != "skip" and e.status != JobStatus.SUCCEEDED.value]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
