"""More nodes on this machine: a Ray worker node (its own raylet, object store and workers) joined to a head of
orchestration.local_head, so that one machine holds a cluster of several nodes, e.g. a training node that gives
no CPU to the input and CPU-only input nodes (benchmarks/ray_data_throughput.py --nodes). It listens on 127.0.0.1
like its head, on a port block of its own; `stop_node` (or stopping the head) ends it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestration.head_processes import head_processes, kill_all
from orchestration.launch_config import labels_arg
from orchestration.local_head import Head
from orchestration.loopback import BIN, LOOPBACK_ONLY
from orchestration.ports import HeadPorts

NODE_OBJECT_STORE_BYTES = 300_000_000


@dataclass(eq=False)
class LocalNode:
    """A worker node started by `start_node`: its `ray start --block` process leads the session of its daemons."""

    process: subprocess.Popen
    temp_dir: Path

    def processes(self) -> list[int]:
        """Its raylet and daemons, the workers they started and their children (orchestration/head_processes.py)."""
        return head_processes(str(self.temp_dir), self.process.pid)


def start_node(head: Head, num_cpus: int, ports: HeadPorts, labels: dict[str, str] | None = None,
               timeout_s: float = 120.0) -> LocalNode:
    """A node of `num_cpus` CPUs (and `labels`) joined to `head`, its daemons on `ports` (HeadPorts.block: a block
    no other head or node uses); returns once the head counts its CPUs. Its own temporary directory: two raylets
    of one session on one machine would share their socket files."""
    temp = Path(tempfile.mkdtemp(prefix=f"rayn{ports.node_manager}-", dir="/tmp"))
    cmd = [str(BIN / "ray"), "start", "--address", head.address, "--node-ip-address", "127.0.0.1",
           "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(NODE_OBJECT_STORE_BYTES),
           "--temp-dir", str(temp), "--disable-usage-stats", "--block", *ports.node_flags(),
           *(["--labels", labels_arg(labels)] if labels else [])]
    before = head.cpus()
    env = {k: v for k, v in {**head.env(), **ports.env_vars()}.items() if k not in LOOPBACK_ONLY}
    with open(temp / "ray_start.err", "w") as err:  # a file, not a pipe: read after a failure, never blocks
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                   start_new_session=True)
    node = LocalNode(process, temp)
    deadline = time.monotonic() + timeout_s
    try:
        while head.cpus() < before + num_cpus:
            if process.poll() is not None:
                raise RuntimeError(f"`{' '.join(cmd)}` exited ({process.returncode}): {failure_text(temp)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"a node did not join {head.address} within {timeout_s:g} s: "
                                   f"{failure_text(temp)}")
            time.sleep(0.5)
    except BaseException:
        stop_node(node)
        raise
    return node


def failure_text(temp: Path) -> str:
    """The end of what a node that did not start said: `ray start`'s stderr and its raylet's error log."""
    said = [(temp / "ray_start.err").read_text(errors="replace")[-1500:]]
    said += [f"{log.name}: {log.read_text(errors='replace')[-1500:]}" for log in temp.glob("session_*/logs/raylet.err")]
    return "\n".join(said)


def stop_node(node: LocalNode, timeout_s: float = 30.0) -> None:
    """SIGKILL every process of the node (a node lost, as far as the head can tell) and remove its directory."""
    kill_all(node.processes, f"Ray node {node.temp_dir}", timeout_s)
    node.process.wait(timeout=timeout_s)
    shutil.rmtree(node.temp_dir, ignore_errors=True)
