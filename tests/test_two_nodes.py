"""A real two-node Ray cluster on this machine: a head and a second `ray start --address` node of 1 CPU each, MLflow
behind an `mlflow server` on 127.0.0.1. A 2-worker run (one worker per node) loses the second node mid-run, a fresh
node joins, and the run resumes from its last checkpoint to the same parameters as an uninterrupted run, in one MLflow
run. With one node left, a run that needs two fails in seconds with a message."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from dashboards.ui import UiServer
from orchestration.head_processes import head_processes, kill_all
from orchestration.local_head import Head, start_head, stop_head
from orchestration.loopback import BIN
from orchestration.ports import HeadPorts, free_port, free_port_block

from .helpers import loopback, worker_port_bases
from .test_orchestration import STEPS, final_model, write_config
from .test_security import torch_listeners

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


class Node:
    """A second node of `head` on this machine: `ray start --address`, in a session of its own, every port it opens
    in `ports`' block (so a fresh node never waits for a dead one's ports)."""

    def __init__(self, head: Head, ports: HeadPorts) -> None:
        flags = ports.flags()
        named = dict(zip(flags[::2], flags[1::2], strict=True))
        for head_only in ("--port", "--dashboard-port", "--ray-client-server-port"):
            named.pop(head_only)
        cmd = [str(BIN / "ray"), "start", "--address", head.address, "--num-cpus", "1", "--num-gpus", "0",
               "--object-store-memory", "300000000", "--disable-usage-stats",
               *[arg for pair in named.items() for arg in pair]]
        starter = subprocess.Popen(cmd, env=head.env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        out, err = starter.communicate(timeout=120)
        assert starter.returncode == 0, out + err
        self.session = starter.pid
        self.head = head
        self.ports = ports

    def pids(self) -> list[int]:
        return head_processes("/nonexistent", self.session)  # its session (no temp dir of its own)

    def raylet(self) -> int:
        (pid,) = [p for p in self.pids() if Path(f"/proc/{p}/exe").resolve().name == "raylet"]
        return pid

    def kill(self) -> None:
        """The raylet first (the node is lost), then whatever of the node is left."""
        os.kill(self.raylet(), signal.SIGKILL)
        kill_all(self.pids, "the second node")


def alive_cpus(head: Head) -> float:
    """The CPUs of the cluster's live nodes, as its GCS counts them."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    return sum(u.total for u in get_cluster_status(head.address).cluster_resource_usage if u.resource_name == "CPU")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Iterator[tuple[Head, list[Node], str]]:
    """The head (1 CPU), a second node (1 CPU), and an `mlflow server` URL."""
    folder = tmp_path_factory.mktemp("two_nodes")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # creates the store the server serves
    server = UiServer(store, port=free_port())
    url = server.start()
    bases = worker_port_bases()
    head = start_head(num_cpus=1, num_gpus=0, ports=free_port_block(bases), loopback_only=False)  # nodes may join
    nodes = []
    try:
        nodes.append(Node(head, free_port_block(bases)))
        yield head, nodes, url
    finally:
        for node in nodes:
            node.kill()
        stop_head(head)
        server.stop()


def orchestrate(folder: Path, config: Path, head: Head, url: str, *sets: str, timeout: float = 400,
                poll: Callable[[subprocess.Popen], None] | None = None) -> tuple[int, dict | None, str]:
    """orchestration.train on the two-node cluster: (exit code, summary, its stderr); `poll(driver)` runs while it
    does."""
    args = [arg for s in sets for arg in ("--set", s)]
    log_path = folder / f"driver-{len(list(folder.glob('driver-*')))}.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "orchestration.train", str(config), *args], cwd=folder,
                                  env={**head.env(), "MLFLOW_TRACKING_URI": url}, stdout=subprocess.PIPE, stderr=log,
                                  text=True)
        if poll:
            poll(driver)
        out, _ = driver.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    return driver.returncode, json.loads(lines[-1]) if driver.returncode == 0 and lines else None, log_path.read_text()


def run_config(folder: Path, digits_root: Path) -> Path:
    return write_config(folder, digits_root, **{"cluster.num_workers": 2, "cluster.max_failures": 2})


def test_losing_a_node_mid_run_resumes_on_a_fresh_node_to_the_same_parameters(two_nodes, two_worker_run,
                                                                             digits_root, tmp_path):
    head, nodes, url = two_nodes
    _, reference = two_worker_run  # the same 2-worker run, uninterrupted (on the shared head)
    config = run_config(tmp_path, digits_root)

    storage = tmp_path / "ray_results" / "lost"

    def registered_checkpoints() -> list:
        try:
            return json.loads((storage / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):  # not written yet, or being written
            return []

    def lose_a_node(driver: subprocess.Popen) -> None:
        deadline = time.monotonic() + 240
        # A checkpoint Ray Train's controller has registered (one only uploaded is lost with its worker), then
        # the node goes.
        while not registered_checkpoints():
            assert driver.poll() is None, "the run ended before the node could be lost"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        # Mid-run on two nodes: torch's rendezvous store and gloo's sockets listen on the nodes' own address,
        # neither on every interface nor on loopback (which the other node could not reach).
        pids = [*head.processes(), *(pid for node in nodes for pid in node.pids())]
        found = torch_listeners(pids, [head.ports, *(node.ports for node in nodes)])
        assert found and not any(a.is_unspecified or loopback(a) for a, _ in found), sorted(found, key=str)
        nodes.pop().kill()
        fresh = free_port_block(worker_port_bases())
        nodes.append(Node(head, fresh))  # a fresh node: the worker group starts again on it

    code, summary, log = orchestrate(tmp_path, config, head, url, "tracking.run_name=lost", poll=lose_a_node)
    assert code == 0, log[-3000:]
    # Where the worker groups started: 0, then the registered checkpoint's step (each line may come several times:
    # both nodes' log monitors tail this machine's one session log folder).
    starts = {int(step) for step in re.findall(r"start_step=(\d+)", log)}
    assert len(starts) == 2 and min(starts) == 0 and 0 < max(starts) < STEPS, starts  # resumed, not restarted
    a, b = final_model(summary), final_model(reference)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    lost = [r for r in runs if r.info.run_name == "lost"]
    assert len(lost) == 1 and lost[0].info.status == "FINISHED"  # one MLflow run across the restart
    assert all(r.info.status != "RUNNING" for r in runs)
    steps = sorted({m.step for m in client.get_metric_history(lost[0].info.run_id, "train/loss")})
    assert steps == list(range(1, STEPS + 1))


def test_a_run_that_needs_two_nodes_fails_in_seconds_with_one_left(two_nodes, digits_root, tmp_path):
    head, nodes, url = two_nodes
    nodes.pop().kill()
    t0 = time.monotonic()
    deadline = t0 + 60
    while alive_cpus(head) > 1:  # until Ray has marked the node dead: then the outcome no longer races with that
        assert time.monotonic() < deadline, "Ray did not notice the lost node within 60 s"
        time.sleep(0.5)
    code, _, log = orchestrate(tmp_path, run_config(tmp_path, digits_root), head, url, "tracking.run_name=one_left",
                               "cluster.resource_wait_s=10", "cluster.max_failures=0", timeout=120)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, log[-3000:]  # the capacity check, before any worker is asked for
    assert "the cluster has 1 CPU in all, but cluster.num_workers=2" in errors[0], errors[0]
    assert time.monotonic() - t0 < 60 + 30
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("test")  # absent when this test runs before the other one
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert not [r for r in runs if r.info.run_name == "one_left"]  # refused before an MLflow run was opened
