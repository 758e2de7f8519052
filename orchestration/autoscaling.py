"""A cluster whose autoscaler starts nodes on demand (`ray up`, KubeRay): a run that the nodes alive now cannot hold
asks the autoscaler for its resources and waits for them, instead of being refused.

Without an autoscaler that can add nodes, the capacity check fails at once, as on a fixed cluster. With one, the
driver calls `ray.autoscaler.sdk.request_resources` with one bundle per worker (and the workers' node labels), then
checks again every few seconds, with a progress line, up to cluster.scale_up_wait_s (cloud GPU nodes take
minutes). The request stands for the whole run, so a node lost mid-run is replaced for the restart, and is withdrawn
when the run ends (`request_resources` keeps one request per cluster: the latest caller's).

Which autoscaler: v2 (Ray's flag RAY_enable_autoscaler_v2 on the head, as KubeRay sets it) reports its state to the
GCS; v1's monitor publishes its status, whose report names the node types of its cluster config when its provider
can launch nodes (a plain `ray start --head` runs a read-only one, which makes each node a type of its own). Node
labels (cluster.worker_labels) need v2: v1 ignores a request's label selectors and counts the bundles as fitting on
any node with the resources."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import ray
from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
from ray.autoscaler._private.util import format_readonly_node_type
from ray.autoscaler.sdk import request_resources
from ray.autoscaler.v2.schema import ClusterStatus
from ray.autoscaler.v2.sdk import get_cluster_status
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get

from orchestration.cluster import ClusterError, describe

POLL_S = 5.0
PROGRESS_EVERY_S = 30.0


def can_add_nodes() -> bool:
    """Whether an autoscaler serves the connected cluster and may start nodes (False when not connected)."""
    if not ray.is_initialized():
        return False
    if is_autoscaler_v2():
        return v2_reported(get_cluster_status(ray.get_runtime_context().gcs_address))
    return v1_may_add(_internal_kv_get(DEBUG_AUTOSCALING_STATUS))


def v2_reported(status: ClusterStatus) -> bool:
    """v2: its autoscaler has reported to the GCS (a version above 0)."""
    return int(status.stats.autoscaler_version or 0) > 0


def v1_may_add(status: bytes | None) -> bool:
    """v1: its monitor's report names node types of a cluster config; a read-only provider (a head started without
    one) makes each node a type of its own, named after the node."""
    report = (json.loads(status).get("autoscaler_report") if status else None) or {}
    return any(node_type != format_readonly_node_type(node_id)
               for node_id, node_type in (report.get("node_type_mapping") or {}).items())


def pending_nodes() -> str:
    """What the v1 autoscaler is starting, e.g. "pending: 1 node of type gpu" ("" when unknown)."""
    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(status).get("autoscaler_report") if status else None) or {}
    launching = {**(report.get("pending_launches") or {})}
    for _, node_type, _ in report.get("pending_nodes") or []:
        launching[node_type] = launching.get(node_type, 0) + 1
    return "pending: " + ", ".join(f"{n} node(s) of type {t}" for t, n in launching.items()) if launching else ""


@contextmanager
def scaled_for(check: Callable[[], None], bundles: list[dict[str, float]], labels: dict[str, str] | None,
               wait_s: float, log: Callable[[str], None]) -> Iterator[None]:
    """Run the block once `check` passes (it raises ClusterError while the cluster cannot hold the request). When it
    does not at first and an autoscaler can add nodes, ask it for `bundles` (each on a node with `labels`) and wait
    up to `wait_s` for `check` to pass; the request is withdrawn when the block ends."""
    try:
        check()
    except ClusterError as refused:
        if not can_add_nodes():
            raise
        if labels and not is_autoscaler_v2():
            raise ClusterError(f"{refused}; this cluster's autoscaler is Ray's v1, which starts no node for labels "
                               "(set RAY_enable_autoscaler_v2=1 where the head starts, as KubeRay does)") from None
        reason = str(refused)
    else:
        yield
        return
    request_resources(bundles=bundles, bundle_label_selectors=[labels or {} for _ in bundles])
    try:
        wait_for_nodes(check, bundles, wait_s, log, reason)
        yield
    finally:
        request_resources(bundles=[])


def wait_for_nodes(check: Callable[[], None], bundles: list[dict[str, float]], wait_s: float,
                   log: Callable[[str], None], reason: str) -> None:
    need = f"{len(bundles)} x {describe(bundles[0])}"
    log(f"asked the autoscaler for {need} ({reason}); waiting up to {wait_s:g} s for its nodes")
    start = last_line = time.monotonic()
    while True:
        time.sleep(POLL_S)
        try:
            check()
            log(f"the autoscaler's nodes are up after {time.monotonic() - start:.0f} s")
            return
        except ClusterError as still:
            reason = str(still)
        waited = time.monotonic() - start
        if waited >= wait_s:
            raise ClusterError(f"the autoscaler did not start nodes for {need} within {wait_s:g} s: {reason}; see "
                               "`ray status` for its node types and failed launches, or raise "
                               "cluster.scale_up_wait_s") from None
        if time.monotonic() - last_line >= PROGRESS_EVERY_S:
            pending = pending_nodes()
            log(f"waiting for the autoscaler: {waited:.0f} s of {wait_s:g}" + (f" ({pending})" if pending else ""))
            last_line = time.monotonic()
