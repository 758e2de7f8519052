"""A Ray head on this machine for `make demo` and the tests: started with `ray start`, reachable only on
127.0.0.1, with its dashboard (the job server of `ray job submit`), and stopped with `ray stop`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

BIN = Path(sys.executable).parent  # the project's virtual environment: `ray` and the job's `python`


def cluster_env() -> dict[str, str]:
    """Environment for `ray start` / `ray job submit`: the venv first on PATH (the job's `python` is the
    head's), and token auth off because this head listens on 127.0.0.1 only."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled"}


def dashboard_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def head_running(dashboard_port: int) -> bool:
    try:
        return requests.get(f"{dashboard_url(dashboard_port)}/api/version", timeout=2).ok
    except requests.RequestException:
        return False


def start_head(num_cpus: int | None = None, gcs_port: int = 6379, dashboard_port: int = 8265,
               object_store_bytes: int = 1_000_000_000, timeout_s: float = 120.0) -> None:
    """`ray start --head` bound to 127.0.0.1; returns once the job server answers."""
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
           "--object-store-memory", str(object_store_bytes), "--disable-usage-stats"]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    done = subprocess.run(cmd, env=cluster_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stdout}\n{done.stderr}")
    deadline = time.monotonic() + timeout_s
    while not head_running(dashboard_port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray head started but its dashboard on port {dashboard_port} never answered")
        time.sleep(1.0)


def stop_head() -> None:
    """`ray stop`: ends the Ray processes of this machine's user (and cleans its session files)."""
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=cluster_env(), capture_output=True, text=True)
