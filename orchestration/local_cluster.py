"""A Ray head on this machine for `make demo` and the tests: started with `ray start`, reachable on 127.0.0.1,
with its dashboard (the job server of `ray job submit`), and stopped on its own.

Each head gets its own temporary directory (`ray start --temp-dir`) and runs in its own session (the `ray start`
process is a session leader, and every daemon it spawns keeps that session). `stop_head` ends exactly the
processes of that head: those in its session, those whose command line names its temporary directory, and all of
their descendants (workers, and the drivers of its jobs, which Ray starts in sessions of their own). It never runs
`ray stop`, which ends every Ray process of the user, other heads included.

Several heads can run at once when each has its own ports: `HeadPorts.block(base)` puts every port a head opens
(GCS, dashboard, Ray client server, dashboard agent, runtime env agent, metrics export, node and object manager,
the Prometheus servers of the autoscaler monitor and of the dashboard, the workers' range) in base .. base + 999.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, field
from pathlib import Path

import requests

BIN = Path(sys.executable).parent  # the project's virtual environment: `ray` and the job's `python`
PROC = Path("/proc")
# Unix socket paths (temp dir + /session_<date>_<time>_<pid>/sockets/plasma_store) must stay under ~107 bytes.
MAX_TEMP_DIR_CHARS = 40


def token_path() -> Path:
    """Where Ray's token auth reads the cluster's token: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (Ray's own
    order, after the RAY_AUTH_TOKEN variable itself)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def stored_token() -> str:
    """This user's token as Ray finds it (RAY_AUTH_TOKEN, else the token file), or "" when there is none yet."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    return token_path().read_text().strip() if token_path().is_file() else ""


def ensure_token() -> str:
    """The token of this user's local heads, generated on first use as Ray's `ray get-auth-token --generate` does
    (256 random bits), but created readable by its owner only: whoever reads it can run code on the cluster."""
    if token := stored_token():
        return token
    path = token_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
    token = path.read_text().strip()
    if not token:
        raise RuntimeError(f"Ray token file {path} is empty: delete it and a new token is generated")
    return token


def auth_headers() -> dict[str, str]:
    """The HTTP header that Ray's dashboard and job server ask for under token auth; {} when this user has no token
    (a cluster without auth, e.g. one on another machine, needs none)."""
    token = stored_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


# Ray's single-machine mode (meant for macOS and Windows, where it is the default): the node's address is loopback,
# so every daemon binds 127.0.0.1. On Linux Ray turns --node-ip-address 127.0.0.1 into the host's address and its
# GCS, raylet and agents listen on every interface (NOTES-RAY-MLFLOW.md); with this they listen on loopback only.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def cluster_env(loopback_only: bool = True) -> dict[str, str]:
    """Environment for a local head's `ray start`, `ray job submit` and a driver: the venv first on PATH (the job's
    `python` is the head's), every listener on loopback, and Ray's token auth on with this user's token (see
    ensure_token), so that no other user of this machine gets in either.

    loopback_only=False is for a head that other nodes join (Ray refuses nodes in its single-machine mode): its
    daemons then listen on the host's address too, and the token is all that keeps others out."""
    ensure_token()
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
            **(LOOPBACK_ONLY if loopback_only else {})}


def use_token_auth() -> None:
    """Token auth on for Ray in this process, with this user's token: for a driver or client of a local head (or a
    Ray this process starts). Ray read RAY_AUTH_MODE when it was imported, so its config is reloaded, as Ray's own
    default-on token setup does."""
    from ray._raylet import Config

    ensure_token()
    if os.environ.get("RAY_AUTH_MODE") != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


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
    process: loopback_driver(), and its GCS address fixed and known to all its processes in advance (RAY_ADDRESS).
    Ray Train's PlacementGroupCleaner looks its cluster up by that variable: without it, with another Ray on the
    machine, it dies with "Found multiple active Ray instances"."""
    loopback_driver()
    gcs_port = free_port()
    os.environ.update({"RAY_GCS_SERVER_PORT": str(gcs_port), "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"})


def dashboard_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def head_running(dashboard_port: int) -> bool:
    """A Ray job server answers on `dashboard_port` (with this user's token, or refusing it: a head either way)."""
    try:
        answer = requests.get(f"{dashboard_url(dashboard_port)}/api/version", headers=auth_headers(), timeout=2)
    except requests.RequestException:
        return False
    return answer.ok or answer.status_code in (401, 403)


@dataclass(frozen=True)
class HeadPorts:
    """The ports of one head; None leaves the choice to Ray (its defaults: client server 10001, dashboard agent
    52365, workers 10002-19999, the others random)."""

    gcs: int = 6379
    dashboard: int = 8265
    client_server: int | None = None
    dashboard_agent_listen: int | None = None
    dashboard_agent_grpc: int | None = None
    runtime_env_agent: int | None = None
    metrics_export: int | None = None
    node_manager: int | None = None
    object_manager: int | None = None
    autoscaler_metrics: int | None = None  # no `ray start` flag: the environment variables of env_vars()
    dashboard_metrics: int | None = None
    min_worker: int | None = None
    max_worker: int | None = None

    @classmethod
    def block(cls, base: int) -> HeadPorts:
        """Every port in base .. base + 999: GCS base, dashboard base + 1, the other daemons base + 2 .. base + 10,
        workers base + 100 .. base + 999 (PORT_BLOCK_BASES lists the bases that collide with nothing of Ray's)."""
        return cls(gcs=base, dashboard=base + 1, client_server=base + 2, dashboard_agent_listen=base + 3,
                   dashboard_agent_grpc=base + 4, runtime_env_agent=base + 5, metrics_export=base + 6,
                   node_manager=base + 7, object_manager=base + 8, autoscaler_metrics=base + 9,
                   dashboard_metrics=base + 10, min_worker=base + 100, max_worker=base + 999)

    def daemon_ports(self) -> list[int]:
        """The ports set here, but the workers' range."""
        return [p for p in astuple(self)[:-2] if p is not None]

    def flags(self) -> list[str]:
        named = {"--port": self.gcs, "--dashboard-port": self.dashboard, "--ray-client-server-port": self.client_server,
                 "--dashboard-agent-listen-port": self.dashboard_agent_listen,
                 "--dashboard-agent-grpc-port": self.dashboard_agent_grpc,
                 "--runtime-env-agent-port": self.runtime_env_agent, "--metrics-export-port": self.metrics_export,
                 "--node-manager-port": self.node_manager, "--object-manager-port": self.object_manager,
                 "--min-worker-port": self.min_worker, "--max-worker-port": self.max_worker}
        return [arg for flag, port in named.items() if port is not None for arg in (flag, str(port))]

    def env_vars(self) -> dict[str, str]:
        """The Prometheus ports of the autoscaler monitor and of the dashboard, fixed (44217, 44227) unless set
        in the environment of `ray start`."""
        named = {"AUTOSCALER_METRIC_PORT": self.autoscaler_metrics, "DASHBOARD_METRIC_PORT": self.dashboard_metrics}
        return {var: str(port) for var, port in named.items() if port is not None}


@dataclass(eq=False)
class Head:
    """A head started by `start_head`: its ports, its temporary directory and the session of its processes."""

    ports: HeadPorts
    temp_dir: Path
    session_id: int
    num_cpus: int | None = None
    num_gpus: int | None = None
    own_temp_dir: bool = field(default=True, repr=False)
    loopback_only: bool = True  # False: a head that other nodes may join (see cluster_env)
    stopped: bool = field(default=False, repr=False)  # once stopped, its session id may be reused: never look again

    @property
    def address(self) -> str:
        """The GCS address, for RAY_ADDRESS / `ray.init(address=...)`."""
        return f"127.0.0.1:{self.ports.gcs}"

    @property
    def dashboard_url(self) -> str:
        """The job server, for `ray job submit --address` / JobSubmissionClient."""
        return dashboard_url(self.ports.dashboard)

    def env(self) -> dict[str, str]:
        """cluster_env() with RAY_ADDRESS: a driver started with it joins this head."""
        return {**cluster_env(self.loopback_only), "RAY_ADDRESS": self.address}

    def running(self) -> bool:
        return head_running(self.ports.dashboard)

    def processes(self) -> list[int]:
        """The pids of this head's processes (see the module's docstring)."""
        return [] if self.stopped else head_processes(str(self.temp_dir), self.session_id)

    def busy(self) -> dict[str, float]:
        """What the cluster's tasks, actors and placement groups hold or wait for right now, read from its GCS:
        {resource: amount in use} plus {"pending": n} for requests that wait for resources; {} when idle.

        Node markers ("node:<ip>", "node:__internal_head__") are left out: they are no capacity, only where a
        task must run. Ray's own detached helpers pin themselves to the head with a sliver of one (Ray Train's
        PlacementGroupCleaner takes node:__internal_head__ 0.001 per run, and one whose controller was killed
        with its driver can linger for minutes) and they take no CPU, GPU or memory from anyone."""
        from ray.autoscaler.v2.sdk import get_cluster_status  # Ray's import is slow: only where it is needed

        use_token_auth()
        def capacity(resource: str) -> bool:
            return not resource.startswith("node:")

        status = get_cluster_status(self.address)
        held = {u.resource_name: u.used for u in status.cluster_resource_usage
                if u.used > 1e-9 and capacity(u.resource_name)}
        demands = [*status.resource_demands.ray_task_actor_demand, *status.resource_demands.placement_group_demand]
        pending = sum(1 for demand in demands for request in demand.bundles_by_count
                      if any(amount > 0 and capacity(key) for key, amount in request.bundle.items()))
        return {**held, **({"pending": pending} if pending else {})}

    def wait_idle(self, timeout_s: float = 120.0, settle_s: float = 0.5) -> None:
        """Return once nothing holds or waits for the cluster's resources (seen twice, settle_s apart, as the
        GCS learns of a change within a fraction of a second); RuntimeError saying what is held after timeout_s."""
        deadline = time.monotonic() + timeout_s
        idle_once = False
        while True:
            held = self.busy()
            if not held and idle_once:
                return
            idle_once = not held
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray head {self.address} still busy after {timeout_s:g} s: {held}")
            time.sleep(settle_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now at `host` (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on `port` (on any address) and a server could bind it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT leftovers are free
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


# Bases of HeadPorts.block: clear of Ray's defaults (6379, 8265, 10001-19999, 52365), of the Ray client's
# per-client servers (23000-24000) and of Linux's ephemeral ports (32768 and up, where random ports land).
PORT_BLOCK_BASES = (*range(20000, 23000, 1000), *range(25000, 32000, 1000))


def free_port_block(bases: Iterable[int] = PORT_BLOCK_BASES) -> HeadPorts:
    """HeadPorts.block of the first base whose daemon ports and a sample of whose worker ports are free."""
    for base in bases:
        ports = HeadPorts.block(base)
        if all(port_free(p) for p in [*ports.daemon_ports(), *range(ports.min_worker, ports.max_worker + 1, 50)]):
            return ports
    raise RuntimeError(f"no free block of Ray ports at any of the bases {list(bases)}")


_started: list[Head] = []  # the heads this process started and has not stopped yet, for stop_head()


def start_head(num_cpus: int | None = None, gcs_port: int = 6379, dashboard_port: int = 8265,
               object_store_bytes: int = 1_000_000_000, timeout_s: float = 120.0, *, ports: HeadPorts | None = None,
               num_gpus: int | None = None, temp_dir: str | Path | None = None, loopback_only: bool = True) -> Head:
    """`ray start --head` for 127.0.0.1; returns once the job server answers. `ports` (e.g. HeadPorts.block(base))
    replaces gcs_port / dashboard_port and sets every other port; `temp_dir` defaults to a new directory of its
    own, which stop_head removes; loopback_only=False lets other nodes join (see cluster_env)."""
    ports = ports or HeadPorts(gcs=gcs_port, dashboard=dashboard_port)
    own_temp_dir = temp_dir is None
    temp = Path(temp_dir or tempfile.mkdtemp(prefix=f"ray{ports.gcs}-", dir=_temp_root()))
    temp.mkdir(parents=True, exist_ok=True)
    if len(str(temp)) > MAX_TEMP_DIR_CHARS:
        raise ValueError(f"temp dir {temp}: over {MAX_TEMP_DIR_CHARS} characters, Ray's socket paths would be too long")
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", *ports.flags(),
           "--dashboard-host", "127.0.0.1", "--temp-dir", str(temp), "--object-store-memory", str(object_store_bytes),
           "--disable-usage-stats"]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    # A session of its own: the daemons `ray start` leaves behind keep it, which is how stop_head finds them.
    # RAY_ADDRESS: for Ray Train's PlacementGroupCleaner (see prepare_in_process_ray).
    env = {**cluster_env(loopback_only), **ports.env_vars(), "RAY_ADDRESS": f"127.0.0.1:{ports.gcs}"}
    starter = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    head = Head(ports, temp, starter.pid, num_cpus, num_gpus, own_temp_dir, loopback_only)
    try:
        out, err = starter.communicate(timeout=timeout_s)
        if starter.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{out}\n{err}")
        deadline = time.monotonic() + timeout_s
        while not head.running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray head started but its dashboard on port {ports.dashboard} never answered")
            time.sleep(0.5)
    except BaseException:
        starter.kill()
        starter.wait()
        _stop(head)
        raise
    _started.append(head)
    return head


def stop_head(head: Head | None = None, timeout_s: float = 30.0) -> None:
    """End `head`'s processes (all of them at once, as `ray stop --force` would) and remove its temporary
    directory; without an argument, every head this process started. Other heads keep running."""
    for one in ([head] if head is not None else list(reversed(_started))):
        _stop(one, timeout_s)
        if one in _started:
            _started.remove(one)


def interrupt_on_sigterm() -> None:
    """SIGTERM (`kill`, `ray job stop`, a scheduler's preemption) ends this process as Ctrl-C does: as a
    KeyboardInterrupt, so its cleanup runs (a head stopped, an MLflow run marked KILLED). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def kill_all(processes: Callable[[], list[int]], what: str, timeout_s: float = 30.0) -> None:
    """SIGKILL every pid of `processes()` until it lists none; asked again and again, since a process can spawn a
    child while the others are killed. RuntimeError naming `what` when some survive timeout_s."""
    deadline = time.monotonic() + timeout_s
    while pids := processes():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: processes {pids} survived SIGKILL for {timeout_s:g} s")


def _stop(head: Head, timeout_s: float = 30.0) -> None:
    if head.stopped:
        return
    if not PROC.is_dir():  # no /proc to tell one head's processes from another's: the old, blunt way
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=cluster_env(), capture_output=True, text=True)
    else:
        kill_all(head.processes, f"Ray head {head.address}", timeout_s)
    head.stopped = True
    if head.own_temp_dir:
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def _temp_root() -> str:
    """Where head temp dirs go: the system's temp dir unless its path is long (macOS's is), then /tmp."""
    root = tempfile.gettempdir()
    return root if len(root) <= 16 or not Path("/tmp").is_dir() else "/tmp"


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of this user's live processes, read from /proc."""
    table = {}
    uid = os.getuid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
            if fields[0] in ("Z", "X"):  # a zombie is dead already: only its parent's wait() is left
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)
        except (OSError, ValueError, IndexError):  # it ended while being read
            continue
    return table


def head_processes(temp_dir: str, session_id: int) -> list[int]:
    """Ray's processes in the session `session_id`, processes whose command line names `temp_dir`, and all of
    their descendants."""
    table = _process_table()
    temp_dir = temp_dir.rstrip("/")

    def of_head(sid: int, cmdline: str) -> bool:
        names_temp_dir = f"{temp_dir}/" in cmdline or f"{temp_dir} " in f"{cmdline} "
        return names_temp_dir or (sid == session_id and "ray" in cmdline.lower())

    found = {pid for pid, (_, sid, cmdline) in table.items() if of_head(sid, cmdline)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    me = os.getpid()
    while me > 1:  # never the caller, nor its ancestors (a job on one head may stop another head)
        found.discard(me)
        me = table.get(me, (0, 0, ""))[0]
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestration.local_cluster`: a head for `ray job submit` in the foreground, until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m orchestration.local_cluster",
                                     description="A Ray head on this machine (loopback only, token auth) until "
                                                 "Ctrl-C, which stops this head and nothing else.")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs it offers (default: all)")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs it offers (default: all)")
    parser.add_argument("--port", type=int, default=6379, help="its GCS port, for RAY_ADDRESS")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="its job server, for --address")
    args = parser.parse_args(argv)
    if head_running(args.dashboard_port):
        print(f"error: a Ray job server already answers on {dashboard_url(args.dashboard_port)}; use it, or pick "
              "another --dashboard-port and --port", file=sys.stderr)
        return 2
    print("starting a Ray head on 127.0.0.1 ...", flush=True)
    head = start_head(args.num_cpus, args.port, args.dashboard_port, num_gpus=args.num_gpus)
    print(f"Ray head: RAY_ADDRESS={head.address}, job server {head.dashboard_url}; token in {token_path()} "
          "(`ray job submit` needs RAY_AUTH_MODE=token). Ctrl-C stops it.", flush=True)
    interrupt_on_sigterm()
    try:
        while head.running():
            time.sleep(2.0)
        print("error: the Ray head stopped by itself", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the Ray head", flush=True)
        return 0
    finally:
        stop_head(head)


if __name__ == "__main__":
    sys.exit(main())
