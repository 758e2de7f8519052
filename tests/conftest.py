"""Shared fixtures: the digits demo data is built once per test session (per xdist worker), and so is the one Ray
head that every test of that session needing a cluster shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mupvit.data.digits import build_digits

from .helpers import worker_port_bases

if TYPE_CHECKING:  # orchestration needs the platform extras: imported by the fixtures, not by every test
    from orchestration.local_head import Head

# The most any test asks of the shared head at once: two Ray Train workers (or two trials) of one CPU each, or
# one trial of two workers. A test asking for more must fail for want of CPUs (the "too-many-workers" case).
SHARED_HEAD_CPUS = 2


# `make test` runs the suite in two pytest-xdist workers (--dist loadgroup). Tests that share an expensive module-
# or session-scoped fixture run in one worker, so it is built once and not once per worker.
SHARED_FIXTURE_GROUPS = {
    "cluster": "second-host",
    "store": "report-store", "two_rank_run": "ddp-run", "trained": "trained-run", "rows": "coord-check-rows",
    "tracking_server": "mlflow-server",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups (it appends them to node ids)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = next((SHARED_FIXTURE_GROUPS[name] for name in item.fixturenames if name in SHARED_FIXTURE_GROUPS),
                     None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    # The slow tests first (xdist hands out work in this order), so that no long one starts last while the other
    # worker idles; a stable sort, the same in every worker.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def ray_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Ray token of every head, driver and job of the session, in a file of its own (RAY_AUTH_TOKEN_PATH, which
    every subprocess inherits): the suite neither reads nor writes the user's ~/.ray/auth_token."""
    path = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    before = {var: os.environ.pop(var, None) for var in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    yield path
    os.environ.pop("RAY_AUTH_TOKEN_PATH")
    os.environ.update({var: value for var, value in before.items() if value is not None})


@pytest.fixture(scope="session", autouse=True)
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The digits demo data, built once per session in the session's own MUPVIT_DATA_DIR (which every subprocess
    inherits): a test of a shipped config without data.root finds it built and prints no "building ..." line,
    whichever test comes first, and the suite never writes the user's ~/.cache/mupvit."""
    before = os.environ.get("MUPVIT_DATA_DIR")
    os.environ["MUPVIT_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    yield build_digits()
    if before is None:
        os.environ.pop("MUPVIT_DATA_DIR")
    else:
        os.environ["MUPVIT_DATA_DIR"] = before


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Head]:
    """One Ray head on 127.0.0.1 for the whole session, started when a test first needs it: 2 CPUs and no GPU
    (also on a machine with one: the tests expect "the cluster has 0 GPU"), every port in a block of its own
    (never Ray's defaults, nor the ports of a head of the user's, of another test run or of another xdist worker),
    its own temp dir. It is stopped on its own at the end: other Ray heads of this machine keep running."""
    from orchestration.local_head import start_head, stop_head
    from orchestration.ports import free_port_block

    head = start_head(num_cpus=SHARED_HEAD_CPUS, num_gpus=0, ports=free_port_block(worker_port_bases()))
    yield head
    stop_head(head)


@pytest.fixture
def ray_env(ray_head: Head) -> dict[str, str]:
    """The environment for a driver on the shared head (PATH, RAY_ADDRESS, its token), handed over once the head
    is idle: no task, actor or placement group of an earlier test holds or waits for its resources, so each
    test finds all of its CPUs free, as it would on a head of its own."""
    ray_head.wait_idle()
    return ray_head.env()


@pytest.fixture(scope="session")
def reference(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tests/test_orchestration.py's tiny run, uninterrupted, on one worker: `mupvit.train.run` in this process with
    one thread, as a Ray Train worker of 1 CPU runs it; its final parameters. The orchestrated runs that stop, fail,
    resume or read through Ray Data end on them bit for bit."""
    import torch

    from mupvit.config import load_config
    from mupvit.train import run

    from .helpers import QuietLogger
    from .test_orchestration import write_config

    folder = tmp_path_factory.mktemp("reference")
    cfg = load_config(write_config(folder, digits_root), [f"train.out_dir={folder / 'run'}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(cfg, QuietLogger())
    finally:
        torch.set_num_threads(threads)
    return torch.load(summary["checkpoint"], weights_only=True)["model"]


@pytest.fixture(scope="session")
def two_worker_run(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tests/test_orchestration.py's tiny run, uninterrupted, on two workers: two `mupvit.train` processes of one
    thread in a gloo group, as two Ray Train workers of 1 CPU run it; its final parameters. A preempted 2-worker run
    ends on them bit for bit (tests/test_preemption.py: 2 ranks sum their gradients in either order alike, so a
    restart or Ray Train changes no bit), an elastic run that goes on with one worker for a while within float error
    (tests/test_second_host.py)."""
    import torch
    import torch.multiprocessing as mp

    from orchestration.ports import free_port

    from .helpers import two_rank_worker
    from .test_orchestration import write_config

    folder = tmp_path_factory.mktemp("two_workers")
    mp.spawn(two_rank_worker, args=(free_port(), str(write_config(folder, digits_root)), str(folder)), nprocs=2,
             join=True)
    return torch.load(folder / "final.pt", weights_only=True)
