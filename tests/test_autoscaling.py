"""A run on a cluster whose autoscaler starts nodes on demand: Ray's own fake node provider (what
ray.cluster_utils.AutoscalingCluster runs, here on a head of our own ports rather than after its `ray stop --force`,
which would end every Ray of this machine) launches real raylets on this machine when asked."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
from ray._raylet import GcsClient
from ray.autoscaler.v2.schema import ClusterStatus, Stats

from dashboards.ui import serve
from orchestration.autoscaling import v1_may_add, v2_reported
from orchestration.local_head import start_head, stop_head
from orchestration.ports import free_port, free_port_block
from orchestration.ray_token import use_token_auth

from .helpers import worker_port_bases
from .test_orchestration import orchestrate, summary_of, write_config

pytestmark = pytest.mark.slow

def fake_cluster_config(gcs_address: str) -> dict:
    """A `ray up` cluster config for Ray's fake multi-node provider: a head of 1 CPU and a node type "cpu" (1 CPU)
    at 0 nodes, up to 1."""
    return {
        "cluster_name": "autoscaling-test", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "auth": {"ssh_user": "ray"}, "docker": {}, "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 1, "object_store_memory": 200 * 2**20}, "node_config": {},
                    "min_workers": 0, "max_workers": 1},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def test_which_heads_have_an_autoscaler_that_starts_nodes():
    # v1 statuses as the GCS gave them (trimmed): a plain head's read-only provider makes its node a type of its own;
    # a cluster config's head has its node type. v2 has reported once its version is above 0.
    node = "0c8c913c7d43e6a19c528f82f4ef3a7e4e3e3bd32ec597ed51892e01"
    plain = {"monitor_pid": 5172, "autoscaler_report": {"active_nodes": {f"node_{node}": 1}, "pending_launches": {},
                                                        "node_type_mapping": {node: f"node_{node}"}, "legacy": True}}
    launching = {"monitor_pid": 5668, "autoscaler_report": {"active_nodes": {"ray.head.default": 1},
                                                            "node_type_mapping": {node: "ray.head.default"}}}
    starting = {"monitor_pid": 5172}  # before its first update
    assert v1_may_add(json.dumps(launching).encode())
    assert not any(v1_may_add(json.dumps(s).encode()) for s in (plain, starting)) and not v1_may_add(None)
    assert not v2_reported(ClusterStatus(stats=Stats(autoscaler_version="0")))
    assert v2_reported(ClusterStatus(stats=Stats(autoscaler_version="12")))


@pytest.fixture
def autoscaling_head(tmp_path):
    """A head of 1 CPU whose autoscaler (Ray's v1, with its fake node provider) may start one "cpu" node; other nodes
    may join it, so it listens beyond loopback, with token auth. (Ray 2.60's v2 autoscaler cannot run the fake
    provider: the defaults file it reads, fake_multi_node/example.yaml, is missing from the wheel.)"""
    ports = free_port_block(worker_port_bases())
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(f"127.0.0.1:{ports.gcs}")))
    head = start_head(num_cpus=1, num_gpus=0, ports=ports, loopback_only=False, autoscaling_config=config,
                      env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    try:
        yield head
    finally:
        stop_head(head)


def test_a_run_that_needs_a_node_type_at_zero_nodes_gets_one_from_the_autoscaler(autoscaling_head, digits_root,
                                                                                  tmp_path):
    """Two workers of 1 CPU on a head of 1 CPU: the run asks the autoscaler for them, which starts a "cpu" node, and
    finishes on both nodes. A run that needs node labels fails at once, naming v1's limit (it would never start a node
    for them); a cluster without an autoscaler still fails at once (tests/test_orchestration.py,
    too-many-workers)."""
    head = autoscaling_head
    use_token_auth()
    gcs = GcsClient(address=head.address)
    deadline = time.monotonic() + 60
    while not v1_may_add(gcs.internal_kv_get(DEBUG_AUTOSCALING_STATUS.encode(), None)):
        assert time.monotonic() < deadline, "the autoscaler reported nothing within 60 s"  # (a second or two)
        time.sleep(0.5)
    assert head.cpus() == 1  # the head alone
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # creates the store, which the server opens only if it exists
    config = write_config(tmp_path, digits_root, **{"cluster.num_workers": 2})
    with serve(store, port=free_port()) as uri:  # a cluster of several nodes needs an MLflow server
        labelled = orchestrate(tmp_path, config, head.env(), f"tracking.uri={uri}",
                               "cluster.worker_labels={node-type: gpu}", "tracking.run_name=labelled", timeout=120)
        done = orchestrate(tmp_path, config, head.env(), f"tracking.uri={uri}", "tracking.run_name=scaled")
    assert labelled.returncode == 2, labelled.stderr[-3000:]
    assert "error: cluster.worker_labels: no node of the cluster carries them" in labelled.stderr
    assert "this cluster's autoscaler is Ray's v1, which starts no node for labels" in labelled.stderr
    summary = summary_of(done)
    assert summary["final/val/acc1"] > 0 and Path(summary["checkpoint"]).is_dir()
    assert ("asked the autoscaler for 2 x 1 CPU (the cluster has 1 CPU in all, but cluster.num_workers=2 x 1 CPU "
            "per worker needs 2") in done.stderr, done.stderr[-3000:]
    assert "the autoscaler's nodes are up after" in done.stderr, done.stderr[-3000:]
    assert head.cpus() == 2  # the node it started is there
