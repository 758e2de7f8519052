"""`make demo`: the digits reproduction submitted with `ray job submit` to a Ray head on this machine.

Starts a head on 127.0.0.1 unless one answers on the dashboard port, submits `python -m orchestration.train`
with the project directory as the job's working dir, waits, stops the head if it started it and prints the
result; the job's JSON summary is left in runs/demo_summary.json, from which `make demo` then draws the
comparison report (`python -m dashboards.report --summary runs/demo_summary.json`). Runs and checkpoints land in
./ray_results, MLflow in ./mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mupvit.config import ConfigError, add_set_argument
from orchestration.launch_config import load_launch
from orchestration.local_head import dashboard_url, head_running, start_head, stop_head
from orchestration.loopback import BIN, cluster_env
from orchestration.train_job import train_job_command, write_job_env


def submit_command(root: Path, dashboard_port: int, config: str, overrides: list[str], summary: Path,
                   env_file: Path) -> list[str]:
    """`ray job submit` of the demo; its env_vars go in `env_file` (written here, outside the working dir), not on
    the command line this prints, since they may hold the user's credentials."""
    write_job_env(env_file, root, f"sqlite:///{root / 'mlflow.db'}")
    sets = [f"cluster.storage_path={root / 'ray_results'}", *overrides]
    return [str(BIN / "ray"), "job", "submit", "--address", dashboard_url(dashboard_port), "--working-dir", str(root),
            "--runtime-env", str(env_file), "--", *train_job_command(config, sets, summary)]


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
        start_head(dashboard_port=args.dashboard_port)
    try:
        with tempfile.TemporaryDirectory(prefix="mupvit-demo-") as folder:
            cmd = submit_command(root, args.dashboard_port, args.config, args.overrides, summary_path,
                                 Path(folder) / "job_env.yaml")
            print("demo: " + " ".join(cmd), flush=True)
            code = subprocess.run(cmd, env=cluster_env()).returncode
    finally:
        if started:
            print("demo: stopping the Ray head it started", flush=True)
            stop_head()
    if code != 0 or not summary_path.exists():
        print(f"demo: the job failed (ray job submit exited {code}); its log is above", file=sys.stderr)
        return code or 1
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
