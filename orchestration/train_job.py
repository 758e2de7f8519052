r"""A `python -m orchestration.train` run as a Ray job: its command line and the environment a job's working dir
cannot provide (it is a copy without .git, in a temporary folder). Shared by `make demo` and campaigns.

    python -m orchestration.train_job ENV_FILE [--tracking-uri URI]
    ray job submit --address http://<head>:8265 --working-dir . --runtime-env ENV_FILE -- \
        python -m orchestration.train CONFIG --set ...

The first writes ENV_FILE (readable by you alone: it holds the bucket's credentials and the MLflow login).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from mupvit.config import ConfigError
from mupvit.outputs import check_output_file
from orchestration.cluster import run_env
from orchestration.tracking import git_state

REPO = Path(__file__).resolve().parent.parent


def train_job_env(repo: Path, tracking_uri: str) -> dict[str, str]:
    """The job's env_vars: an absolute MLflow URI (a relative one would land in the job's temp dir), the submitting
    checkout's commit, which orchestration.tracking.git_state reads when there is no .git, and run_env() (the
    bucket's variables, the MLflow login). At the job's level, since the job's driver runs on the head, which was
    not started with them either, and everything the driver starts inherits them from there."""
    commit, dirty = git_state(repo)
    return {"MUPVIT_GIT_COMMIT": commit + ("-dirty" if dirty else ""), "MLFLOW_TRACKING_URI": tracking_uri,
            **run_env()}


def write_job_env(path: Path, repo: Path, tracking_uri: str) -> None:
    """train_job_env as a runtime env file for `ray job submit --runtime-env`, readable by its owner alone (it may
    hold credentials; on a command line, --runtime-env-json, every user of the machine could read them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({"env_vars": train_job_env(repo, tracking_uri)}, out, sort_keys=False)


def train_job_command(config: str, overrides: list[str], summary: Path | None = None) -> list[str]:
    """`python -m orchestration.train CONFIG [--summary-json PATH] --set K=V ...` as the job runs it."""
    summary_args = ["--summary-json", str(summary)] if summary is not None else []
    return ["python", "-m", "orchestration.train", config, *summary_args,
            *[arg for override in overrides for arg in ("--set", override)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.train_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_file", type=Path, help="the runtime env file to write (outside --working-dir)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="the MLflow server the job logs to (default: $MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    path = args.env_file.expanduser().resolve()
    try:
        if not args.tracking_uri or "://" not in args.tracking_uri:
            raise ConfigError("--tracking-uri: give the MLflow server's URI (http://<head>:5000), or set "
                              "MLFLOW_TRACKING_URI; a job's relative store would land in its temporary folder")
        check_output_file(path, "ENV_FILE")
        write_job_env(path, REPO, args.tracking_uri)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}: ray job submit ... --runtime-env {path} -- python -m orchestration.train ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
