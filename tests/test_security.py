"""Nobody but this machine's user gets into a local Ray: every listener of a head (the tests' shared one, started
as `make demo` starts its own) and of a run's in-process local Ray is on loopback, and a client without the token
is refused by the GCS and by the job server."""

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

from orchestration.cluster import loopback_only_gcs
from orchestration.head_processes import head_processes
from orchestration.loopback import LOOPBACK_ONLY
from orchestration.ray_token import auth_headers, ensure_token, token_path

from .helpers import listeners, loopback

REPO = Path(__file__).resolve().parent.parent
TASK = "import ray; ray.init(); print(ray.get(ray.remote(lambda: 42).remote()))"


def without_token(env: dict[str, str]) -> dict[str, str]:
    """A client of this machine that does not have the user's token (another user, or a process of the network)."""
    stripped = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    return {**stripped, "RAY_AUTH_MODE": "disabled", "HOME": "/nonexistent"}


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
