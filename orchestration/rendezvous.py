"""The rendezvous of a run's torch.distributed process group, closed to the network.

Ray Train's own TorchConfig (ray/train/torch/config.py, Ray 2.60) hands every worker MASTER_ADDR/MASTER_PORT and
lets torch's env:// rendezvous start rank 0's TCPStore, which listens on every interface (`*:PORT`) whatever
MASTER_ADDR says, and has no authentication: anyone who reaches the port can write into the store that the ranks
trust. Gloo's and NCCL's own sockets bind the address the host name resolves to. Here:
- the store listens on loopback when every worker of the run is on one node, else on the rank-0 node's own cluster
  address (the one Ray's nodes reach each other by), never on every interface: rank 0 binds that socket itself,
  before its port is announced, and hands it to the TCPStore (`master_listen_fd`);
- gloo's and NCCL's sockets (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME) use `lo` on one node, else the interface of
  each worker's node address (a user's own setting of those variables wins on several nodes).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from datetime import timedelta
from pathlib import Path

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK = "127.0.0.1"
SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address

# Rank 0's store socket, bound and listening from the moment its port is chosen until the TCPStore takes it over:
# no other process can take the port in between (Ray's own backend closes its probe socket and hopes).
_listener: socket.socket | None = None


def _where() -> tuple[str, str]:
    """(Ray node id, node address) of the worker running this."""
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def _listen(host: str) -> int:
    """On rank 0: a socket listening on `host` at a port of the kernel's choice, kept for _join; returns the port."""
    global _listener
    if _listener is not None:
        _listener.close()
    _listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    _listener.bind((host, 0))
    _listener.listen(socket.SOMAXCONN)  # ranks that connect before rank 0's store starts wait in the backlog
    return _listener.getsockname()[1]


def interface_of(address: str) -> str | None:
    """The name of this machine's network interface that holds `address` (Linux), or None."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return "lo"
    if ip.version == 6:  # /proc/net/if_inet6: address in hex, index, prefix, scope, flags, name
        table = Path("/proc/net/if_inet6")
        lines = table.read_text().splitlines() if table.exists() else []
        return next((f[5] for f in map(str.split, lines) if f[0] == ip.exploded.replace(":", "")), None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
            if socket.inet_ntoa(answer[20:24]) == address:
                return name
    return None


def _join(backend: str, rank: int, world_size: int, host: str, port: int, one_node: bool, timeout_s: int) -> None:
    """On every worker: gloo's/NCCL's interface, then the process group around a TCPStore that rank 0 serves on
    the socket _listen bound."""
    global _listener
    interface = "lo" if one_node else interface_of(ray.util.get_node_ip_address())
    if interface is not None:
        chosen = {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": f"={interface}"}  # "=": this name only
        for var, value in chosen.items():
            if one_node:  # loopback is right for one node whatever else is set
                os.environ[var] = value
            else:
                os.environ.setdefault(var, value)
    os.environ.update({"MASTER_ADDR": host, "MASTER_PORT": str(port)})  # for libraries that read them
    if backend == "nccl" and not {"TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"} & set(os.environ):
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"  # as Ray's: a timed-out collective fails the worker
    listen_fd = None
    if rank == 0:
        listen_fd, _listener = _listener.detach(), None  # the store owns the socket from here
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, master_listen_fd=listen_fd)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


class _ClosedRendezvousBackend(_TorchBackend):
    """_TorchBackend with its on_start replaced (the rest, shutdown included, is Ray's)."""

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        places = worker_group.execute(_where)
        one_node = len({node for node, _ in places}) == 1
        host = LOOPBACK if one_node else places[0][1]
        port = worker_group.execute_single(0, _listen, host)
        worker_group.execute(_set_torch_distributed_env_vars)  # RANK, LOCAL_RANK, ... as Ray's own backend sets
        ray.get([worker_group.execute_single_async(rank, _join, backend_config.backend or "gloo", rank,
                                                   len(places), host, port, one_node, backend_config.timeout_s)
                 for rank in range(len(places))])


class ClosedRendezvousConfig(TorchConfig):
    """TorchConfig whose process group rendezvous listens on loopback (one node) or the rank-0 node's own address
    (several), never on every interface (see the module's docstring)."""

    @property
    def backend_cls(self):
        return _ClosedRendezvousBackend
