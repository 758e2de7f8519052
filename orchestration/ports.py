"""TCP ports for local Ray heads: a free port, whether a port is free, and `HeadPorts`, every port one head opens,
which `HeadPorts.block(base)` puts in base .. base + 999 so that several heads run side by side."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import astuple, dataclass


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

    def node_flags(self) -> list[str]:
        """flags() less the head's own ports (GCS, dashboard, client server): a worker node's `ray start` flags."""
        flags = self.flags()
        named = dict(zip(flags[::2], flags[1::2], strict=True))
        for head_only in ("--port", "--dashboard-port", "--ray-client-server-port"):
            named.pop(head_only, None)
        return [arg for pair in named.items() for arg in pair]

    def env_vars(self) -> dict[str, str]:
        """The Prometheus ports of the autoscaler monitor and of the dashboard, fixed (44217, 44227) unless set
        in the environment of `ray start`."""
        named = {"AUTOSCALER_METRIC_PORT": self.autoscaler_metrics, "DASHBOARD_METRIC_PORT": self.dashboard_metrics}
        return {var: str(port) for var, port in named.items() if port is not None}


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
