"""`make demo`: the digits reproduction submitted as a Ray job to a Ray head on this machine.

Starts a head on 127.0.0.1 unless one answers on the dashboard port, submits `python -m orchestration.train`
with the project directory as the job's working dir, waits, stops the head if it started it and prints the
result; the job's JSON summary is left in runs/demo_summary.json, from which `make demo` then draws the
comparison report (`python -m dashboards.report --summary runs/demo_summary.json`). Runs and checkpoints land in
./ray_results, MLflow in ./mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ray.job_submission import JobStatus

from mupvit.config import ConfigError, add_set_argument
from orchestration.cluster import ClusterError
from orchestration.job_server import follow_job, job_client
from orchestration.launch_config import load_launch
from orchestration.local_head import dashboard_url, head_running, start_head, stop_head
from orchestration.train_job import train_job_command, train_job_env


def submit_demo(root: Path, dashboard_port: int, config: str, overrides: list[str], summary: Path) -> JobStatus:
    """Submit the demo as a Ray job (the same job as `ray job submit --working-dir . -- python -m
    orchestration.train ...`, its env_vars passed in the request, not on a command line), follow its log on the
    console and return its final status. Ctrl-C stops the job."""
    client = job_client(dashboard_url(dashboard_port))
    sets = [f"cluster.storage_path={root / 'ray_results'}", *overrides]
    entrypoint = shlex.join(train_job_command(config, sets, summary))
    print(f"demo: job: {entrypoint}", flush=True)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={
        "working_dir": str(root), "env_vars": train_job_env(root, f"sqlite:///{root / 'mlflow.db'}")})
    print(f"demo: submitted job {job_id}; its whole log, Ray's own lines too: ray job logs {job_id} --address "
          f"{dashboard_url(dashboard_port)}", flush=True)
    try:
        return follow_job(client, job_id, sys.stdout.write)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="experiments/demo_digits.yaml")
    add_set_argument(parser)
    parser.add_argument("--dashboard-port", type=int, default=8265)
    args = parser.parse_args(argv)
    try:
        load_launch(args.config, args.overrides)  # a bad config fails before a head starts
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = Path.cwd().resolve()
    summary_path = root / "runs" / "demo_summary.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    started = not head_running(args.dashboard_port)
    if started:
        print(f"demo: starting a Ray head on 127.0.0.1 (dashboard {dashboard_url(args.dashboard_port)})", flush=True)
        head = start_head(dashboard_port=args.dashboard_port)
        print(f"demo: Ray's logs: {head.temp_dir}/session_latest/logs (removed with the head at the end)", flush=True)
    try:
        status = submit_demo(root, args.dashboard_port, args.config, args.overrides, summary_path)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if started:
            print("demo: stopping the Ray head it started", flush=True)
            stop_head()
    if status != JobStatus.SUCCEEDED or not summary_path.exists():
        print(f"demo: the job ended {status.value}; its log is above", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    results = {k: v for k, v in summary.items() if k.startswith("acc1_at_")}
    print("\n== demo result ==")
    print(f"val top-1 {100 * summary.get('final/val/acc1', float('nan')):.2f}%  "
          + "  ".join(f"{k} {100 * v:.2f}%" for k, v in sorted(results.items())))
    print(f"MLflow run {summary['mlflow_run_id']} ({summary['run_name']}) in {summary['tracking_uri']}")
    print(f"summary: {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
