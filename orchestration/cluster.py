"""Connecting to Ray and checking, before anything is scheduled, that the cluster can hold the request."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from typing import Any

import ray

from orchestration.launch_config import ClusterConfig, labels_arg
from orchestration.loopback import loopback_driver, prepare_in_process_ray

# A tracking server's login (MLflow's own variables), which every process of a run that logs needs.
MLFLOW_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

# A local Ray on a small machine: cap the object store (it defaults to 30% of RAM) so torch keeps the memory.
LOCAL_OBJECT_STORE_BYTES = 1_000_000_000


class ClusterError(RuntimeError):
    """The cluster cannot run this request; the message says what is missing."""


REACH_TIMEOUT_S = 5.0


def split_address(address: str) -> tuple[str, int] | None:
    """("10.0.0.1", 6379) of "10.0.0.1:6379" or "ray://[::1]:10001"; None for "auto", "local" and the like."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else None


def check_reachable(address: str) -> None:
    """A host:port GCS address must accept a TCP connection within seconds (ray.init would retry for minutes)."""
    if (host_port := split_address(address)) is None:
        return  # "auto", "local", ...: Ray resolves those itself
    try:
        socket.create_connection(host_port, timeout=REACH_TIMEOUT_S).close()
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({err.strerror or type(err).__name__}); "
                           "start it with `ray start --head` or fix cluster.address / RAY_ADDRESS") from None


def loopback_only_gcs(address: str) -> bool:
    """The GCS at `address` is on this machine and listens on loopback only, as local_head's heads do: a driver
    must then run in Ray's single-machine mode too (a plain `ray start` head listens on the host's address as well,
    and wants its drivers on that address)."""
    if (host_port := split_address(address)) is None:
        return False
    host, port = host_port
    try:
        if not ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback:
            return False
    except ValueError:  # a host name
        return False
    try:  # the address this machine's traffic leaves from (a UDP "connect" sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            host_ip = probe.getsockname()[0]
    except OSError:  # no route off this machine: loopback is all there is
        return True
    if ipaddress.ip_address(host_ip).is_loopback:
        return True
    try:
        socket.create_connection((host_ip, port), timeout=REACH_TIMEOUT_S).close()
    except OSError:
        return True
    return False


def run_env() -> dict[str, str]:
    """The variables every Ray process of a run needs that a joined cluster's nodes were started without: the
    bucket's (every AWS_*: endpoint, credentials, region) and the MLflow server's login; and Ray Data's log level
    (WARNING unless set: data.pipeline ray_data's executor runs in Ray Data's own coordinator actors, whose INFO
    lines, two per dataset, would reach the run's console). The one list, for ray.init (job_runtime_env) and for a
    submitted job's own runtime env (orchestration.train_job)."""
    return {**{k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in MLFLOW_LOGIN},
            "RAY_DATA_LOG_LEVEL": os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING")}


def job_runtime_env(given: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """run_env() for the whole job, given at ray.init, with the user's runtime env `given` (--runtime-env-json:
    its env_vars win over run_env's): a job's runtime env reaches every task and actor it starts and theirs (the
    data probe, Tune's trials, Ray Train's controller and workers, a trial's own TorchTrainer; Ray merges env_vars
    with a child's own), so this one place covers them all, whichever node they land on. A submitted job brings its
    own (train_job_env): only what it lacks is added, since ray.init refuses a key given twice."""
    given = dict(given or {})
    env = {**run_env(), **given.pop("env_vars", {})}
    if job := os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        submitted = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in submitted}
    runtime_env = {**given, **({"env_vars": env} if env else {})}
    return runtime_env or None


def connect(c: ClusterConfig, runtime_env: dict[str, Any] | None = None) -> str:
    """Join cluster.address / $RAY_ADDRESS, or start a local Ray, with job_runtime_env(runtime_env); returns a
    description for the log."""
    if ray.is_initialized():
        return "already connected"
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # workers' lines as plain text: no ANSI codes in logs and files
    address = c.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        if loopback_only_gcs(address):  # a head of local_head: join it on its terms
            loopback_driver()
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True,
                     runtime_env=job_runtime_env(runtime_env))
        except (ConnectionError, RuntimeError) as err:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {err}. Start one with "
                               "`ray start --head` or fix cluster.address / RAY_ADDRESS") from err
        return f"Ray cluster at {address}"
    prepare_in_process_ray()  # its daemons would listen on every interface, open to anyone
    # address="local": a new Ray of this run's own, even when another cluster runs on this machine (plain ray.init()
    # would join that one). The dashboard serves the State API that Ray Train's placement-group cleaner polls.
    ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=True,
             dashboard_host="127.0.0.1", logging_level="WARNING", runtime_env=job_runtime_env(runtime_env))
    return "a local Ray started for this run"


def worker_resources(c: ClusterConfig) -> dict[str, float]:
    return {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if c.use_gpu else {})}


def carries(node: dict[str, Any], labels: dict[str, str] | None) -> bool:
    """Whether a node (as ray.nodes() lists it) carries every label of `labels` (None: any node does)."""
    have = node.get("Labels") or {}
    return all(have.get(k) == v for k, v in (labels or {}).items())


def label_flag(labels: dict[str, str]) -> str:
    """The `ray start` flag that gives a node `labels`."""
    return f'--labels="{labels_arg(labels)}"'


def check_capacity(c: ClusterConfig, nodes: list[dict[str, Any]] | None = None) -> None:
    """Fail within seconds when no placement could ever satisfy cluster.num_workers x worker resources (an elastic
    run: its min) on the nodes that carry cluster.worker_labels (Ray itself would wait forever, e.g. for a GPU that
    does not exist)."""
    nodes = [n for n in (nodes if nodes is not None else ray.nodes()) if n.get("Alive")]
    if c.worker_labels:
        nodes = [n for n in nodes if carries(n, c.worker_labels)]
        if not nodes:
            raise ClusterError(f"cluster.worker_labels: no node of the cluster carries them, so no worker could "
                               f"start; start the training nodes with {label_flag(c.worker_labels)} or unset "
                               "cluster.worker_labels")
    per_worker = worker_resources(c)
    totals = {k: sum(n["Resources"].get(k, 0.0) for n in nodes) for k in per_worker}
    n = c.min_workers
    for key, amount in per_worker.items():
        if totals[key] < n * amount:
            hint = ("set cluster.use_gpu: false, or use a cluster with GPUs" if key == "GPU"
                    else "lower cluster.num_workers or cluster.cpus_per_worker, or add nodes")
            raise ClusterError(f"the cluster has {totals[key]:g} {key} in all, but cluster.num_workers={n} x "
                               f"{amount:g} {key} per worker needs {n * amount:g}; {hint}")
    # Each worker must fit on one node.
    fits = sum(int(min(node["Resources"].get(k, 0.0) // v for k, v in per_worker.items())) for node in nodes)
    if fits < n:
        raise ClusterError(f"only {fits} worker(s) of {per_worker} fit on the cluster's nodes; "
                           f"cluster.num_workers={n}")


def describe(resources: dict[str, float]) -> str:
    """{"CPU": 2.0, "GPU": 1.0} as "2 CPU + 1 GPU"."""
    return " + ".join(f"{amount:g} {key}" for key, amount in resources.items())


def held_by_others(need: dict[str, float]) -> str:
    """What other jobs hold of the resources in `need`, e.g. "other jobs hold 2 of the cluster's 2 CPU"."""
    total, free = ray.cluster_resources(), ray.available_resources()
    held = [f"{total.get(k, 0.0) - free.get(k, 0.0):g} of the cluster's {total.get(k, 0.0):g} {k}" for k in need]
    return f"other jobs hold {', '.join(held)}"


def wait_for_free_resources(c: ClusterConfig, log=print, need: dict[str, float] | None = None,
                            purpose: str = "for the run's workers") -> float:
    """Capacity exists but may be busy (another job): wait up to cluster.resource_wait_s for `need` (default: every
    worker's resources; an elastic run's fewest) to be free, saying once what it waits for, then fail saying what
    was missing. Returns the seconds of the wait left. Capacity is checked again at every poll: a node that Ray
    marks dead meanwhile turns the wait into check_capacity's error. The driver's one implementation of waiting
    for resources."""
    need = need or {k: v * c.min_workers for k, v in worker_resources(c).items()}
    deadline = time.monotonic() + c.resource_wait_s
    announced = False
    while True:
        free = ray.available_resources()
        if all(free.get(k, 0.0) >= v for k, v in need.items()):
            return max(0.0, deadline - time.monotonic())
        check_capacity(c)  # short: busy, or a node gone (the caller checked capacity just before the first poll)
        if time.monotonic() >= deadline:
            raise ClusterError(f"waited {c.resource_wait_s:g} s for {describe(need)} {purpose}, but "
                               f"{held_by_others(need)}; wait for them to finish or raise cluster.resource_wait_s")
        if not announced:
            log(f"waiting up to {c.resource_wait_s:g} s for {describe(need)} {purpose} ({held_by_others(need)})")
            announced = True
        time.sleep(1.0)


def node_count() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))
