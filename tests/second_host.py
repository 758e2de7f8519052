"""A second host on this machine, for tests of a cluster that shares nothing: a Ray worker node in a network
namespace of its own (a veth pair: the head side's address on this machine, the node's inside) and a mount
namespace of its own (a tmpfs over /tmp, the user's ~/.cache/mupvit and any other folder named), so that neither the
driver's files nor its loopback services are visible there. It joins a head that listens beyond loopback (token
auth on, the token given in the environment: the token file lives in a hidden folder). Needs root (`ip netns`,
`unshare -m`); `host_b` tears everything down (processes, namespace, veth, mounts) also when the test fails.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.head_processes import kill_all
from orchestration.launch_config import labels_arg
from orchestration.local_head import Head
from orchestration.loopback import BIN, cluster_env
from orchestration.ports import PORT_BLOCK_BASES, HeadPorts
from orchestration.ray_token import ensure_token

# 10.213.0.0/16, /30 per host B: unlikely to clash with a real network (checked against this machine's routes).
SUBNET = ipaddress.ip_network("10.213.0.0/16")
_COUNT = itertools.count()
# Every port of host B's node: in its own network namespace, so any block is free there; known, so that a test can
# tell Ray's own listeners from torch's (tests/test_security.py torch_listeners).
PORTS = HeadPorts.block(PORT_BLOCK_BASES[0])


def can_make_hosts() -> bool:
    """Root, with `ip` and `unshare` on PATH: what host_b needs."""
    return os.geteuid() == 0 and all(Path(d, tool).exists() for tool in ("ip", "unshare")
                                     for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin") if Path(d, tool).exists())


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def free_pair() -> tuple[str, str]:
    """(host side, host B) addresses of a /30 in SUBNET that no interface of this machine uses yet."""
    used = ip("-o", "-4", "addr").stdout
    start = os.getpid() % 16000  # different processes start at different /30s
    for i in range(16000):
        net = list(SUBNET.subnets(new_prefix=30))[(start + i) % 16000]
        a, b = (str(h) for h in net.hosts())
        if f" {a}/" not in used and f" {b}/" not in used:
            return a, b
    raise RuntimeError(f"no free /30 in {SUBNET}")


@dataclass
class HostB:
    """A started host B: its namespace, veth, addresses and its `ray start --block` process."""

    netns: str
    veth: str
    host_ip: str  # this machine's end of the veth: where host B reaches the head and other services
    node_ip: str  # host B's address
    labels: dict[str, str] = field(default_factory=dict)  # its node's labels, the same on a replacement node
    process: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        """Every process in host B's network namespace."""
        out = ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def run(self, command: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        """`command` on host B's network (not its mounts): a client that sees only what host B sees of the net."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *command], env=env, capture_output=True,
                              text=True, timeout=timeout)


def node_env(head: Head) -> dict[str, str]:
    """host B's environment: the head's (token auth on, the venv on PATH), the token itself instead of its file
    (hidden there), and no AWS or MLflow variables: what a run needs there must travel in Ray's runtime env."""
    env = {k: v for k, v in cluster_env(loopback_only=False).items()
           if not k.startswith(("AWS_", "MLFLOW_")) and k not in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    return {**env, "RAY_AUTH_TOKEN": ensure_token()}


def hidden_folders(extra: list[Path]) -> list[Path]:
    """What host B must not see: `extra` (outside /tmp, which is hidden whole), the user's mupvit cache, /tmp."""
    cache = Path.home() / ".cache" / "mupvit"
    outside = [p for p in [*extra, cache] if p.is_dir() and not p.resolve().is_relative_to("/tmp")]
    return [*outside, Path("/tmp")]  # /tmp last: a mount point under it would be hidden first


REPO = Path(__file__).resolve().parent.parent


def hiding_script(hide: list[Path]) -> str:
    """Shell lines, run in host B's mount namespace, that lay a tmpfs over each hidden folder. The code and the
    venv stay visible even when they live under /tmp (a clone there): bound aside under a tmpfs on /mnt first, then
    bound back onto the fresh /tmp."""
    under_tmp = [p for p in (REPO, Path(sys.prefix).resolve()) if p.is_relative_to("/tmp")]
    keep = [p for p in under_tmp if not any(p != q and p.is_relative_to(q) for q in under_tmp)]
    aside = [f"mkdir /mnt/keep{i}; mount --bind {shlex.quote(str(p))} /mnt/keep{i}" for i, p in enumerate(keep)]
    back = [f"mkdir -p {shlex.quote(str(p))}; mount --bind /mnt/keep{i} {shlex.quote(str(p))}"
            for i, p in enumerate(keep)]
    hidden = [f"mount -t tmpfs -o size=2g tmpfs {shlex.quote(str(p))}" for p in hidden_folders(hide)]
    return "; ".join([*(["mount -t tmpfs -o size=1m tmpfs /mnt", *aside] if keep else []), *hidden, *back])


@contextmanager
def host_b(head: Head, hide: list[Path] = (), num_cpus: int = 1, timeout_s: float = 120,
           labels: dict[str, str] | None = None) -> Iterator[HostB]:
    """Host B joined to `head` (started with loopback_only=False) with `num_cpus` CPUs and its node's `labels`;
    everything it made is removed on the way out, and the way out fails if anything is left."""
    tag = f"{os.getpid() % 100000}n{next(_COUNT)}"  # unique per process and call; a veth name has <= 15 chars
    host = HostB(f"mupvit-b{tag}", f"mvb{tag}", *free_pair(), labels=labels or {})
    peer = f"mvp{tag}"
    try:
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", host.netns)
        ip("addr", "add", f"{host.host_ip}/30", "dev", host.veth)
        ip("link", "set", host.veth, "up")
        inside = ["netns", "exec", host.netns, "ip"]
        ip(*inside, "addr", "add", f"{host.node_ip}/30", "dev", peer)
        ip(*inside, "link", "set", peer, "up")
        ip(*inside, "link", "set", "lo", "up")
        # The head's node address is this machine's own (Ray picks it): reached through the veth.
        ip(*inside, "route", "add", "default", "via", host.host_ip)
        start_node(host, head, hide, num_cpus, timeout_s)
        yield host
    finally:
        teardown(host, peer)


def start_node(host: HostB, head: Head, hide: list[Path], num_cpus: int, timeout_s: float) -> None:
    """A Ray node of `num_cpus` CPUs on host B, in a mount namespace of its own (so a fresh one sees none of the
    files its predecessor wrote), joined to `head`: returns once the head counts its CPUs."""
    ray = shlex.join([str(BIN / "ray"), "start", "--address", f"{host.host_ip}:{head.ports.gcs}",
                      "--node-ip-address", host.node_ip, "--num-cpus", str(num_cpus), "--num-gpus", "0",
                      "--object-store-memory", "300000000", "--disable-usage-stats", "--block", *PORTS.node_flags(),
                      *(["--labels", labels_arg(host.labels)] if host.labels else [])])
    before = head.cpus()
    host.process = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "unshare", "-m", "--propagation", "private", "sh", "-c",
         f"set -e; {hiding_script(hide)}; exec {ray}"],
        env=node_env(head), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while head.cpus() < before + num_cpus:
        if host.process.poll() is not None:
            raise RuntimeError(f"host B's node exited ({host.process.returncode}): {host.process.stderr.read()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"host B's node did not join {head.address} within {timeout_s:g} s")
        time.sleep(0.5)


def lose_node(host: HostB, head: Head, num_cpus: int = 1, timeout_s: float = 120) -> None:
    """Host B's node dies (every process of host B SIGKILLed, its files gone with its mount namespace); returns once
    the head has marked it dead."""
    cpus = head.cpus()
    kill_all(host.pids, "host B")
    host.process.wait(timeout=30)
    host.process.stderr.close()
    deadline = time.monotonic() + timeout_s
    while head.cpus() > cpus - num_cpus:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the head did not mark host B's node dead within {timeout_s:g} s")
        time.sleep(0.5)


def replace_node(host: HostB, head: Head, hide: list[Path] = (), num_cpus: int = 1, timeout_s: float = 120) -> None:
    """Host B's node dies and a fresh one starts at the same address: a preempted machine replaced."""
    lose_node(host, head, num_cpus, timeout_s)
    start_node(host, head, hide, num_cpus, timeout_s)


def teardown(host: HostB, peer: str) -> None:
    """Kill host B's processes (its mounts go with its mount namespace), delete its namespace and veth; fail if
    any of it is still there."""
    if host.netns in ip("netns", "list").stdout.split():
        kill_all(host.pids, "host B")
    if host.process is not None:
        host.process.wait(timeout=30)
        host.process.stderr.close()
    ip("netns", "del", host.netns, check=False)
    ip("link", "del", host.veth, check=False)  # gone with its peer already, unless the peer never moved
    left = leftovers(host, peer)
    assert not left, f"host B left behind: {left}"


def leftovers(host: HostB, peer: str) -> list[str]:
    """What of host B still exists: its namespace, either end of its veth, a mount of its tmpfs in any process."""
    left = [host.netns] if host.netns in ip("netns", "list").stdout.split() else []
    left += [name for name in (host.veth, peer) if ip("link", "show", name, check=False).returncode == 0]
    return left
