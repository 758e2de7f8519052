"""A Ray job server as the project's commands use it: a client that fails in seconds with what to do, and a job's log
followed on the console without Ray's own housekeeping lines (the whole log stays with the job: `ray job logs ID`)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import requests
from ray.job_submission import JobStatus, JobSubmissionClient

from orchestration.cluster import ClusterError
from orchestration.ray_token import auth_headers, token_path

# Lines of a job's log that are Ray's, not the run's: the job manager's own INFO lines ("Runtime env is setting up.",
# "Running entrypoint for job ...") and one C++ notice that Ray Train 2.60 prints at every run start although
# nothing is wrong: its PreemptionWatcher actor has max_restarts set and arguments in the object store
# (ray-project/ray#53727). Any other line of Ray's, an error above all, still shows.
RAY_HOUSEKEEPING = (
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+INFO job_manager\.py:\d+ -- "),
    re.compile(r"^Running entrypoint for job \S+: "),
    re.compile(r"^\(TrainController pid=\d+\) \[[^]]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: "
               r"'PreemptionWatcher' .* max_restarts > 0"),
)


def job_client(address: str, timeout_s: float = 5.0) -> JobSubmissionClient:
    """A client for the Ray job server at `address`, with this user's Ray token, or ClusterError within seconds
    (Ray's own check has no timeout)."""
    how = ("start a Ray head: on this machine `make demo` starts one for its run, or see the README's \"Launching\" "
           "section (token auth, loopback only); on a cluster `ray start --head --dashboard-host 0.0.0.0` on the head "
           "node; then pass its dashboard with --address http://<head>:8265")
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"--address {address!r}: expected the Ray dashboard's URL, e.g. http://127.0.0.1:8265")
    headers = auth_headers()
    try:
        answer = requests.get(f"{address.rstrip('/')}/api/version", headers=headers, timeout=timeout_s)
    except requests.RequestException as err:
        raise ClusterError(f"no Ray job server answers at {address} ({type(err).__name__}); {how}") from None
    if answer.status_code in (401, 403):
        sent = "this user's Ray token" if headers else "a client without a token"
        raise ClusterError(f"the Ray job server at {address} refuses {sent} (HTTP {answer.status_code}): put the "
                           f"cluster's token in {token_path()} or in RAY_AUTH_TOKEN")
    if not answer.ok:
        raise ClusterError(f"the Ray job server at {address} answers HTTP {answer.status_code}; {how}")
    # Packaging the working dir, Ray's client logs each step at INFO and, at WARNING, that it leaves .git and .venv
    # out: the job's own lines are what this project's commands show. On the handler Ray gives its logger, since
    # the client's modules set their own loggers' level to INFO.
    for handler in logging.getLogger("ray").handlers:
        handler.setLevel(logging.ERROR)
    return JobSubmissionClient(address, headers=headers)


def housekeeping(line: str) -> bool:
    """A line of Ray's own in a job's log (RAY_HOUSEKEEPING)."""
    return any(pattern.search(line) for pattern in RAY_HOUSEKEEPING)


def follow_job(client: JobSubmissionClient, job_id: str, write: Callable[[str], object]) -> JobStatus:
    """Pass the job's log to `write`, line by line as it comes, less Ray's housekeeping, until the job ends; its
    final status."""
    async def tail() -> None:
        partial = ""
        async for chunk in client.tail_job_logs(job_id):
            *lines, partial = (partial + chunk).split("\n")
            for line in lines:
                if not housekeeping(line):
                    write(line + "\n")
        if partial and not housekeeping(partial):
            write(partial + "\n")

    asyncio.run(tail())
    return client.get_job_status(job_id)
