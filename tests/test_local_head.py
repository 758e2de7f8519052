"""orchestration.local_head: several Ray heads at once on this machine, each on ports and in a temp dir of its
own, and stopping one ends exactly its processes: the others keep running (the session's shared head among them)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.local_head import Head, stop_head
from orchestration.loopback import BIN
from orchestration.ports import HeadPorts, port_free

from .helpers import cmdline, listeners, worker_port_bases

REPO = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- fast: the ports and which processes are a head's


def test_a_port_block_sets_every_port_ray_start_takes_and_stays_inside_the_block():
    ports = HeadPorts.block(26000)
    assert len(set(ports.daemon_ports())) == 11 and all(26000 <= p < 26100 for p in ports.daemon_ports())
    assert (ports.min_worker, ports.max_worker) == (26100, 26999)
    flags = ports.flags()[::2]
    help_text = subprocess.run([str(BIN / "ray"), "start", "--help"], capture_output=True, text=True).stdout
    port_flags = set(re.findall(r"--[a-z-]*port(?![\w-])", help_text))  # not --worker-port-list
    assert set(flags) == port_flags, "a port flag of `ray start` that HeadPorts.block leaves to Ray's choice"
    assert ports.env_vars() == {"AUTOSCALER_METRIC_PORT": "26009", "DASHBOARD_METRIC_PORT": "26010"}
    assert HeadPorts().flags() == ["--port", "6379", "--dashboard-port", "8265"]  # the demo's head: Ray's defaults
    assert HeadPorts().env_vars() == {}


FAKE_DAEMON = """
import subprocess, sys, time
# like a raylet (named "ray" here): it starts a job's driver in a session of its own, which names no temp dir
driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(sys.argv[1], "a").write(f"{driver.pid}\\n")
time.sleep(300)
"""
FAKE_RAY_START = """
import subprocess, sys, time
# like `ray start`: a session leader that leaves daemons behind and exits
daemon = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1], "ray"])
open(sys.argv[1], "a").write(f"{daemon.pid}\\n")
"""


def fake_head(folder: Path) -> tuple[Head, Path, subprocess.Popen]:
    """Processes arranged like a head's, no Ray: a `ray start` that leaves a daemon (in its session, naming no
    temp dir, like a worker) whose child is a driver in a session of its own, and a log reader elsewhere whose
    command line names the temp dir. Returns the head, the file of the daemon's and driver's pids, the reader."""
    folder.mkdir()
    pids = folder.with_suffix(".pids")
    starter = subprocess.Popen([sys.executable, "-c", FAKE_RAY_START, str(pids), FAKE_DAEMON],
                               start_new_session=True)
    starter.wait()
    reader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"{folder}/session/logs"])
    deadline = time.monotonic() + 30
    while len(pids.read_text().split() if pids.exists() else []) < 2:
        assert time.monotonic() < deadline, "the fake head did not start"
        time.sleep(0.05)
    return Head(HeadPorts(), folder, starter.pid, own_temp_dir=False), pids, reader


def test_stop_head_ends_that_heads_processes_only(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # ray"])
    heads = [fake_head(tmp_path / "a"), fake_head(tmp_path / "a2")]  # a2: its name starts with a's
    try:
        (a, a_pids, a_reader), (b, b_pids, b_reader) = heads
        mine, theirs = ([int(p) for p in pids.read_text().split()] for pids in (a_pids, b_pids))
        assert a.processes() == sorted([*mine, a_reader.pid])  # daemon, its driver (other session), the reader
        assert b.processes() == sorted([*theirs, b_reader.pid])
        stop_head(a)
        assert a_reader.wait(timeout=10) == -signal.SIGKILL
        assert not any(alive(pid) for pid in mine) and a.processes() == []
        assert all(alive(pid) for pid in [*theirs, b_reader.pid, bystander.pid])
        assert b.processes() == sorted([*theirs, b_reader.pid])
        stop_head(b)
        assert not any(alive(pid) for pid in theirs) and alive(bystander.pid)
    finally:
        for head, _, reader in heads:
            stop_head(head)
            reader.wait()
        bystander.kill()
        bystander.wait()


# ---------------------------------------------------------------- a real second head next to the shared one

PRIVATE_HEAD = """
import json, sys
from dataclasses import asdict
from orchestration.local_head import start_head, stop_head
from orchestration.ports import free_port_block

head = start_head(num_cpus=1, num_gpus=0, ports=free_port_block(BASES))
print(json.dumps({"ports": asdict(head.ports), "temp_dir": str(head.temp_dir), "session_id": head.session_id}),
      flush=True)
sys.stdin.readline()
stop_head()  # as orchestration.demo stops the head it started: no argument
print("stopped", flush=True)
"""


@pytest.mark.slow
def test_stopping_a_second_head_leaves_the_shared_head_running(ray_head, ray_env, tmp_path):
    shared_before = ray_head.processes()
    # its daemons live as long as it does; workers come and go (one just forked still has its session dir on its
    # command line, and may be gone a moment later: an earlier test's idle worker reaped). The GCS and the raylet
    # are the same processes throughout; the Python daemons are checked by role (found as many as 6 for 5 roles).
    core = [pid for pid in shared_before if cmdline(pid).split(" ")[0].endswith(("/gcs_server", "/raylet"))]
    assert len(core) == 2, [cmdline(pid)[:120] for pid in shared_before]
    # A second head, started and stopped by another process just as `make demo` does it.
    script = PRIVATE_HEAD.replace("BASES", repr(worker_port_bases()))
    helper = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    private = None
    try:
        line = helper.stdout.readline()
        assert line, f"the second head did not start (exit {helper.wait()})"
        info = json.loads(line)
        private = Head(HeadPorts(**info["ports"]), Path(info["temp_dir"]), info["session_id"])
        assert private.ports.gcs != ray_head.ports.gcs and private.temp_dir != ray_head.temp_dir
        assert private.running() and ray_head.running()
        private_pids = private.processes()
        assert private_pids and not set(private_pids) & set(ray_head.processes())
        # Every port either head listens on is in its own block: nothing of Ray's defaults, nothing shared.
        for head, pids in ((private, private_pids), (ray_head, ray_head.processes())):
            base = head.ports.gcs
            opened = {port for _, port in listeners(pids)}
            assert {base, base + 1} <= opened and all(base <= p < base + 1000 for p in opened), (base, opened)

        helper.stdin.write("\n")
        helper.stdin.flush()
        assert helper.stdout.readline() == "stopped\n" and helper.wait(timeout=60) == 0
    except BaseException:
        helper.kill()
        helper.wait()
        if private is not None:  # what the helper left behind
            stop_head(private)
        raise

    # The second head is gone, all of it, files and ports included ...
    assert not any(alive(pid) for pid in private_pids) and private.processes() == []
    assert not private.temp_dir.exists() and not private.running()
    assert all(port_free(p) for p in private.ports.daemon_ports())
    # ... and the shared one runs on: the same daemons, its job server, its GCS, a task of a new driver.
    assert all(alive(pid) for pid in core) and ray_head.running()
    running = [cmdline(pid) for pid in ray_head.processes()]
    for role in ("/dashboard.py ", "/monitor.py ", "/log_monitor.py "):
        assert any(role in line and str(ray_head.temp_dir) in line for line in running), role
    assert ray_head.busy() == {}
    task = "import ray; ray.init(); print(ray.get(ray.remote(lambda: 42).remote()))"
    done = subprocess.run([sys.executable, "-c", task], env=ray_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "42", done.stderr[-3000:]


LINGERING_HELPER = """
import ray, sys, time
ray.init()
# Like Ray Train's PlacementGroupCleaner: detached, no CPU, pinned to the head by a sliver of its node marker.
helper = ray.remote(num_cpus=0)(type("Helper", (), {"ping": lambda self: 1})).options(
    name="lingering_helper", namespace="test_local_head", lifetime="detached",
    resources={"node:__internal_head__": 0.001}).remote()
worker = ray.remote(num_cpus=1)(type("Worker", (), {"ping": lambda self: 1})).remote()
ray.get([helper.ping.remote(), worker.ping.remote()])
print("up", flush=True)
time.sleep(300)
"""
KILL_HELPER = """
import ray
ray.init()
ray.kill(ray.get_actor("lingering_helper", namespace="test_local_head"))
"""


@pytest.mark.slow
def test_idle_means_no_capacity_held_though_rays_own_helpers_linger(ray_head, ray_env):
    """A killed driver's CPUs come back; a detached helper that only holds a sliver of the head's node marker (as
    Ray Train's PlacementGroupCleaner does) keeps nothing from a test, so the head counts as idle around it."""
    driver = subprocess.Popen([sys.executable, "-c", LINGERING_HELPER], env=ray_env, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert driver.stdout.readline() == "up\n"
        deadline = time.monotonic() + 30
        while (held := ray_head.busy()) != {"CPU": 1.0}:  # the worker's CPU; the helper's marker is no capacity
            assert time.monotonic() < deadline, held
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    try:
        t0 = time.monotonic()
        ray_head.wait_idle(timeout_s=60)  # the worker died with its driver; the detached helper lives on
        assert time.monotonic() - t0 < 60
    finally:
        done = subprocess.run([sys.executable, "-c", KILL_HELPER], env=ray_env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_driver_recipe_the_head_prints_joins_it_and_is_the_readmes(ray_head, ray_env, tmp_path, monkeypatch):
    """A plain `ray.init()` in another terminal joins a loopback-only head after the line `python -m
    orchestration.local_head` prints (without Ray's single-machine mode it would retry the host's address)."""
    recipe = ray_head.driver_recipe()
    words = shlex.split(recipe)
    assert words[0] == "export"
    shell = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a terminal of ours: no Ray settings
    task = "import ray; ray.init(); print(ray.get(ray.remote(lambda: 42).remote()))"
    done = subprocess.run([sys.executable, "-c", task], env={**shell, **dict(w.split("=", 1) for w in words[1:])},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split()[-1] == "42", done.stderr[-3000:]
    # README gives the line of a head on the default ports with the token in its default place.
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))  # its token is made there, not in the user's ~/.ray
    default = Head(HeadPorts(), tmp_path, 0).driver_recipe()
    assert default == "export RAY_ADDRESS=127.0.0.1:6379 RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    assert default in (REPO / "README.md").read_text()
