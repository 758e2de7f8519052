"""A cluster that shares nothing, on one machine: a head of 0 CPUs that listens beyond loopback (token auth on) and
a worker node on "host B" (tests/second_host.py: its own network and mount namespaces), an S3-compatible server
(moto) and an `mlflow server` on this machine's end of host B's veth."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from orchestration.local_head import start_head, stop_head
from orchestration.ports import free_port_block

from .helpers import listeners, loopback, worker_port_bases
from .second_host import can_make_hosts, host_b, ip
from .test_security import TASK, http_status, without_token

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not can_make_hosts(), reason="needs root, ip and unshare")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The head (0 CPUs: every worker goes to host B) and host B (1 CPU)."""
    head = start_head(num_cpus=0, num_gpus=0, ports=free_port_block(worker_port_bases()), loopback_only=False)
    try:
        with host_b(head) as host:
            yield SimpleNamespace(head=head, host=host)
    finally:
        stop_head(head)


def test_host_b_joins_and_the_heads_listeners_beyond_loopback_refuse_a_client_without_the_token(cluster):
    head, host = cluster.head, cluster.host
    outside = {(a, port) for a, port in listeners(head.processes()) if not loopback(a)}
    assert outside, "the head listens on loopback only: host B could not have joined"
    # Every one of them is reachable from host B (at the veth address, or this machine's own, routed through it).
    answered = {port for _, port in outside if http_status(port, host.host_ip) not in (None, 401)}
    # Ray 2.60's two Prometheus servers (read-only metrics; no switch to turn them off: docs/RAY-MLFLOW.md) are
    # the only ones that answer without the token.
    assert answered <= {head.ports.autoscaler_metrics, head.ports.dashboard_metrics}, answered
    refused = host.run([sys.executable, "-c", TASK],
                       {**without_token(head.env()), "RAY_ADDRESS": f"{host.host_ip}:{head.ports.gcs}"})
    assert refused.returncode != 0 and "Authentication token is missing or incorrect" in refused.stderr, \
        refused.stderr[-2000:]


def test_host_b_leaves_nothing_behind_when_it_fails_to_start(cluster):
    """Its teardown fails the test if anything is left (namespace, veth, a process); here it must not."""
    with pytest.raises(RuntimeError, match="did not join"), host_b(cluster.head, timeout_s=0.5):
        pass
    mine = f"mupvit-b{os.getpid() % 100000}n"
    assert [name for name in ip("netns", "list").stdout.split() if name.startswith(mine)] == [cluster.host.netns]
