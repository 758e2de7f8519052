"""Nobody but this machine's user gets into a local Ray: every listener of a head (the tests' shared one, started
as `make demo` starts its own), of a run's in-process local Ray and of every process of a run mid-training (its Ray
Train workers, with torch.distributed's rendezvous store and gloo's sockets: assert_run_on_loopback, which
tests/test_orchestration.py calls while a run trains) is on loopback; a client without the token is refused by the
GCS and by the job server, and the only listeners that answer it are the two Prometheus servers README names."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
from ray.dashboard.consts import DASHBOARD_METRIC_PORT

from orchestration.cluster import loopback_only_gcs
from orchestration.head_processes import head_processes
from orchestration.local_head import Head
from orchestration.loopback import LOOPBACK_ONLY, cluster_env
from orchestration.ports import HeadPorts
from orchestration.ray_token import auth_headers, ensure_token, token_path
from orchestration.rendezvous import interface_of

from .helpers import cmdline, listeners, loopback

REPO = Path(__file__).resolve().parent.parent
TASK = "import ray; ray.init(); print(ray.get(ray.remote(lambda: 42).remote()))"


def without_token(env: dict[str, str]) -> dict[str, str]:
    """A client of this machine that does not have the user's token (another user, or a process of the network).
    It tries the GCS once, not Ray's 20 times a second apart: the refusal is the same, 19 s sooner."""
    stripped = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    return {**stripped, "RAY_AUTH_MODE": "disabled", "HOME": "/nonexistent", "RAY_gcs_server_port_wait_time_s": "1"}


def assert_closed(pids: list[int], gcs_address: str, env: dict[str, str], served: bool = True) -> None:
    """Every listener of `pids` on loopback; a driver without the token refused, one with it served."""
    opened = listeners(pids)
    assert opened, "found no listening socket: the check would prove nothing"
    assert all(loopback(address) for address, _ in opened), sorted(opened, key=str)
    refused = subprocess.run([sys.executable, "-c", TASK], env={**without_token(env), "RAY_ADDRESS": gcs_address},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Authentication token is missing or incorrect" in refused.stderr
    if served:
        done = subprocess.run([sys.executable, "-c", TASK], env={**env, "RAY_ADDRESS": gcs_address},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.split()[-1] == "42", done.stderr[-3000:]


def http_status(port: int, host: str = "127.0.0.1") -> int | None:
    """What a GET of /metrics on `host`:`port` without the token gets: a status, or None (not HTTP: gRPC)."""
    try:
        return requests.get(f"http://{host}:{port}/metrics", timeout=10).status_code
    except requests.RequestException:
        return None


def answered_without_token(pids: list[int]) -> set[int]:
    """The ports of `pids` that answer an HTTP client without the token with anything but 401."""
    return {port for _, port in listeners(pids) if http_status(port) not in (None, 401)}


def torch_listeners(pids: list[int], ray_ports: list[HeadPorts]) -> set:
    """Where the Ray Train workers among `pids` listen outside the port blocks of the cluster's nodes (`ray_ports`),
    which hold every port of Ray's own: torch.distributed's rendezvous store and gloo's sockets."""
    workers = [pid for pid in pids if cmdline(pid).startswith("ray::RayTrainWorker")]
    return {(address, port) for address, port in listeners(workers)
            if not any(block.gcs <= port <= block.max_worker for block in ray_ports)}


def assert_run_on_loopback(head: Head, *driver_pids: int) -> None:
    """While a run on `head` trains: every listener of every process of the run is on loopback: the head's daemons,
    Ray Train's controller and workers (torch's rendezvous store and gloo's sockets among them), the driver."""
    pids = [*head.processes(), *driver_pids]
    assert torch_listeners(pids, [head.ports]), "no Ray Train worker's own listener found: the check proves nothing"
    off = {(cmdline(pid)[:60], str(address), port) for pid in pids for address, port in listeners([pid])
           if not loopback(address)}
    assert not off, sorted(off)


# ---------------------------------------------------------------- the token


def test_the_token_is_made_once_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert token_path() == tmp_path / ".ray" / "auth_token"  # Ray's own default place
    assert auth_headers() == {}  # no token yet: nothing to send
    token = ensure_token()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, as `ray get-auth-token --generate`
    assert stat.S_IMODE(token_path().stat().st_mode) == 0o600
    assert ensure_token() == token and auth_headers() == {"Authorization": f"Bearer {token}"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")  # Ray's first source wins here too
    assert ensure_token() == "from-the-environment"
    assert auth_headers() == {"Authorization": "Bearer from-the-environment"}


def test_an_empty_token_file_is_an_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    with pytest.raises(RuntimeError, match=f"Ray token file {path} is empty"):
        ensure_token()


# ---------------------------------------------------------------- real Ray


@pytest.mark.slow
def test_a_local_head_listens_on_loopback_only_and_refuses_a_client_without_the_token(ray_head, ray_env):
    # served=False: every other test on the shared head is a driver with the token
    assert_closed(ray_head.processes(), ray_head.address, ray_env, served=False)
    jobs = f"{ray_head.dashboard_url}/api/jobs/"
    assert requests.get(jobs, timeout=10).status_code == 401
    assert requests.get(jobs, headers=auth_headers(), timeout=10).status_code == 200
    # Ray's Prometheus servers: the dashboard agent's is off (NO_METRICS); the autoscaler monitor's and the
    # dashboard's, which Ray 2.60 cannot turn off, are the only listeners that answer without the token.
    ports = ray_head.ports
    assert ports.metrics_export not in {port for _, port in listeners(ray_head.processes())}
    assert answered_without_token(ray_head.processes()) == {ports.autoscaler_metrics, ports.dashboard_metrics}


LOCAL_RAY = """
import json, sys
from orchestration.cluster import connect
from orchestration.launch_config import ClusterConfig
import ray

print(connect(ClusterConfig()), flush=True)
print(json.dumps(ray.get_runtime_context().gcs_address), flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_a_runs_own_local_ray_listens_on_loopback_only_even_after_its_driver_is_killed():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}  # Ray's defaults
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], cwd=REPO, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert driver.stdout.readline() == "a local Ray started for this run\n"
        gcs_address = json.loads(driver.stdout.readline())
        ray_pids = head_processes("/nonexistent", driver.pid)  # the driver's session: its GCS, raylet, agents
        assert len(ray_pids) >= 4
        assert_closed(ray_pids, gcs_address, {**env, "RAY_AUTH_MODE": "token", **LOOPBACK_ONLY})
        # Ray's fixed Prometheus ports of the monitor and the dashboard (another Ray may hold them): nothing else
        assert answered_without_token(ray_pids) <= {AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT}
    finally:
        driver.kill()  # the driver alone, as the OOM killer would: its Ray is left to notice
        driver.wait()
    try:
        # Whatever outlives a SIGKILLed driver still listens on loopback only (Ray's daemons end with it).
        deadline = time.monotonic() + 5
        while (left := [p for p in ray_pids if Path(f"/proc/{p}").exists()]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert all(loopback(address) for address, _ in listeners(left))
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # what is left of its session


def test_a_driver_runs_loopback_only_exactly_for_a_loopback_only_gcs():
    with socket.socket() as closed, socket.socket() as open_:
        closed.bind(("127.0.0.1", 0))
        open_.bind(("0.0.0.0", 0))
        closed.listen()
        open_.listen()
        assert loopback_only_gcs(f"127.0.0.1:{closed.getsockname()[1]}")  # a head of local_head
        assert loopback_only_gcs(f"localhost:{closed.getsockname()[1]}")
        assert not loopback_only_gcs(f"127.0.0.1:{open_.getsockname()[1]}")  # a plain `ray start --head`
    assert not loopback_only_gcs("10.1.2.3:6379") and not loopback_only_gcs("head.example:6379")


def test_the_interface_of_an_address_is_the_one_that_holds_it():
    assert interface_of("127.0.0.1") == interface_of("::1") == "lo"
    assert interface_of("192.0.2.1") is None  # documentation's address: on no interface of this machine
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the address this machine's traffic leaves from
        probe.connect(("192.0.2.1", 9))
        host_ip = probe.getsockname()[0]
    name = interface_of(host_ip)
    assert name in {n for _, n in socket.if_nameindex()}


def test_a_head_for_other_nodes_does_not_inherit_the_single_machine_mode(monkeypatch):
    """A driver of a loopback-only head (the suite's, a user's) has the single-machine mode in its environment; a
    head it starts for other nodes to join must not: Ray would keep its GCS on 127.0.0.1 and refuse the nodes."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in cluster_env(loopback_only=False)
    assert cluster_env(loopback_only=True)["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
