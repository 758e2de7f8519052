"""A `python -m orchestration.train` run as a Ray job: its command line and the environment a job's working dir
cannot provide (it is a copy without .git, in a temporary folder). Shared by `make demo` and campaigns."""

from __future__ import annotations

import os
from pathlib import Path

from orchestration.cluster import MLFLOW_LOGIN
from orchestration.tracking import git_state


def train_job_env(repo: Path, tracking_uri: str) -> dict[str, str]:
    """The job's env_vars: an absolute MLflow URI (a relative one would land in the job's temp dir) and the
    submitting checkout's commit, which orchestration.tracking.git_state reads when there is no .git."""
    commit, dirty = git_state(repo)
    login = {k: os.environ[k] for k in MLFLOW_LOGIN if k in os.environ}  # a tracking server's basic-auth login
    return {"MUPVIT_GIT_COMMIT": commit + ("-dirty" if dirty else ""), "MLFLOW_TRACKING_URI": tracking_uri, **login}


def train_job_command(config: str, overrides: list[str], summary: Path | None = None) -> list[str]:
    """`python -m orchestration.train CONFIG [--summary-json PATH] --set K=V ...` as the job runs it."""
    summary_args = ["--summary-json", str(summary)] if summary is not None else []
    return ["python", "-m", "orchestration.train", config, *summary_args,
            *[arg for override in overrides for arg in ("--set", override)]]
