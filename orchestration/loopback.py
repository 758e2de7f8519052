"""The environment of a Ray on this machine that nobody else gets into: for a local head's `ray start`, for
`ray job submit` and a driver (a subprocess's environment, or this process's), and for a Ray that this process
starts itself. Every listener on loopback, and Ray's token auth on with this user's token."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestration.ports import free_port
from orchestration.ray_token import ensure_token, use_token_auth

BIN = Path(sys.executable).parent  # the project's virtual environment: `ray` and the job's `python`

# Ray's single-machine mode (meant for macOS and Windows, where it is the default): the node's address is loopback,
# so every daemon binds 127.0.0.1. On Linux Ray turns --node-ip-address 127.0.0.1 into the host's address and its
# GCS, raylet and agents listen on every interface (docs/RAY-MLFLOW.md); with this they listen on loopback only.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The dashboard agent's Prometheus endpoint (`--metrics-export-port`) answers anyone without the token: off. Ray 2.60
# has no switch for the two other Prometheus servers, of the autoscaler monitor and of the dashboard; they stay, on
# loopback in the single-machine mode (README, "Security").
NO_METRICS = {"RAY_enable_metrics_collection": "false"}


def cluster_env(loopback_only: bool = True) -> dict[str, str]:
    """Environment for a local head's `ray start`, `ray job submit` and a driver: the venv first on PATH (the job's
    `python` is the head's), every listener on loopback, and Ray's token auth on with this user's token (see
    ensure_token), so that no other user of this machine gets in either.

    loopback_only=False is for a head that other nodes join (Ray refuses nodes in its single-machine mode): its
    daemons then listen on the host's address too, and the token is all that keeps others out."""
    ensure_token()
    # Not the single-machine mode inherited from this process (a driver of a loopback-only head has it set).
    inherited = {k: v for k, v in os.environ.items() if loopback_only or k not in LOOPBACK_ONLY}
    return {**inherited, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
            **NO_METRICS, **(LOOPBACK_ONLY if loopback_only else {})}


def loopback_driver() -> None:
    """What cluster_env gives a subprocess, for this process, a driver of a head on this machine: token auth on, and
    Ray's single-machine mode. Ray read that variable when `ray_constants` was imported, so its flag is set too
    (tests/test_security.py fails if Ray renames it)."""
    from ray._private import ray_constants

    use_token_auth()
    os.environ.update(LOOPBACK_ONLY)
    ray_constants.ENABLE_RAY_CLUSTER = False


def prepare_in_process_ray() -> None:
    """What start_head does for `ray start`, for a Ray that `ray.init(address="local")` is about to start in this
    process: loopback_driver(), the agent's metrics endpoint off (NO_METRICS), and its GCS address fixed and known
    to all its processes in advance (RAY_ADDRESS). Ray Train's PlacementGroupCleaner looks its cluster up by that
    variable: without it, with another Ray on the machine, it dies with "Found multiple active Ray instances"."""
    loopback_driver()
    gcs_port = free_port()
    os.environ.update({"RAY_GCS_SERVER_PORT": str(gcs_port), "RAY_ADDRESS": f"127.0.0.1:{gcs_port}", **NO_METRICS})
