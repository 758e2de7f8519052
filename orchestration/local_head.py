"""A Ray head on this machine for `make demo` and the tests: started with `ray start`, reachable on 127.0.0.1,
with its dashboard (the job server of `ray job submit`), and stopped on its own.

Each head gets its own temporary directory (`ray start --temp-dir`) and runs in its own session. `stop_head` ends
exactly the processes of that head (orchestration/head_processes.py). It never runs `ray stop`, which ends every
Ray process of the user, other heads included. Several heads run at once when each has its own ports
(`orchestration.ports.HeadPorts.block`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from orchestration.head_processes import PROC, head_processes, kill_all
from orchestration.launch_config import labels_arg
from orchestration.loopback import BIN, LOOPBACK_ONLY, cluster_env
from orchestration.ports import HeadPorts
from orchestration.ray_token import auth_headers, token_path, use_token_auth
from orchestration.signals import interrupt_on_sigterm

# Unix socket paths (temp dir + /session_<date>_<time>_<pid>/sockets/plasma_store) must stay under ~107 bytes.
MAX_TEMP_DIR_CHARS = 40


def dashboard_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def head_running(dashboard_port: int) -> bool:
    """A Ray job server answers on `dashboard_port` (with this user's token, or refusing it: a head either way)."""
    try:
        answer = requests.get(f"{dashboard_url(dashboard_port)}/api/version", headers=auth_headers(), timeout=2)
    except requests.RequestException:
        return False
    return answer.ok or answer.status_code in (401, 403)


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

    def driver_recipe(self) -> str:
        """The shell line after which a plain driver (`ray.init()`) in another terminal joins this head: its address,
        token auth, the token file when it is not Ray's default, and Ray's single-machine mode. Without that mode a
        driver turns 127.0.0.1 into the host's address, where a loopback-only head does not listen, and Ray retries
        for 90 s before it fails."""
        env = self.env()
        names = ["RAY_ADDRESS", "RAY_AUTH_MODE", *(LOOPBACK_ONLY if self.loopback_only else {}),
                 *(["RAY_AUTH_TOKEN_PATH"] if os.environ.get("RAY_AUTH_TOKEN_PATH") else [])]
        return "export " + " ".join(f"{name}={shlex.quote(env[name])}" for name in names)

    def running(self) -> bool:
        return head_running(self.ports.dashboard)

    def processes(self) -> list[int]:
        """The pids of this head's processes (orchestration/head_processes.py)."""
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

    def cpus(self) -> float:
        """The CPUs of the cluster's live nodes, as its GCS counts them (this head's and those that joined it)."""
        from ray.autoscaler.v2.sdk import get_cluster_status

        use_token_auth()
        return sum(u.total for u in get_cluster_status(self.address).cluster_resource_usage
                   if u.resource_name == "CPU")

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


_started: list[Head] = []  # the heads this process started and has not stopped yet, for stop_head()


def start_head(num_cpus: int | None = None, gcs_port: int = 6379, dashboard_port: int = 8265,
               object_store_bytes: int = 1_000_000_000, timeout_s: float = 120.0, *, ports: HeadPorts | None = None,
               num_gpus: int | None = None, temp_dir: str | Path | None = None, loopback_only: bool = True,
               labels: dict[str, str] | None = None, autoscaling_config: Path | None = None,
               env: dict[str, str] | None = None) -> Head:
    """`ray start --head` for 127.0.0.1; returns once the job server answers. `ports` (e.g. HeadPorts.block(base))
    replaces gcs_port / dashboard_port and sets every other port; `temp_dir` defaults to a new directory of its
    own, which stop_head removes; loopback_only=False lets other nodes join (see cluster_env); `labels`: the head
    node's labels (cluster.worker_labels / data_labels select nodes by them); `autoscaling_config`: a cluster YAML
    for the autoscaler that `ray start` then runs on the head (its node provider may need `env`)."""
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
    if labels:
        cmd += ["--labels", labels_arg(labels)]
    if autoscaling_config is not None:
        cmd += ["--autoscaling-config", str(autoscaling_config)]
    # A session of its own: the daemons `ray start` leaves behind keep it, which is how stop_head finds them.
    # RAY_ADDRESS: for Ray Train's PlacementGroupCleaner (see prepare_in_process_ray).
    env = {**cluster_env(loopback_only), **ports.env_vars(), "RAY_ADDRESS": f"127.0.0.1:{ports.gcs}", **(env or {})}
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


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestration.local_head`: a head for `ray job submit` in the foreground, until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m orchestration.local_head",
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
    print(f"a Python driver (ray.init()) joins it after: {head.driver_recipe()}", flush=True)
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
