"""Open the MLflow UI on the project's SQLite store:

    python -m dashboards.ui [--tracking-uri sqlite:///path/mlflow.db] [--port 5000] [--host 127.0.0.1]

Starts `mlflow server` in its own process group (light settings: one worker, no job runner), waits until /health
answers, prints the URL and stays in the foreground until Ctrl-C, then stops the whole server. Code and tests use
`serve(uri, port)`, a context manager that yields the URL and stops the server on exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from mupvit.config import ConfigError
from orchestration.ports import free_port
from orchestration.tracking import DEFAULT_URI, artifact_location, resolve_uri

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# MLflow 3's UI opens experiments in its GenAI view (traces); this query selects the view with training runs.
TRAINING_VIEW = "workflowType=machine_learning"
STOP_GRACE_S = 10.0


class UiError(RuntimeError):
    """The UI cannot be started; the message says what is wrong and how to fix it."""


def store_uri(given: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI when it is SQLite, else ./mlflow.db; always an absolute SQLite URI.
    A server URI is refused: that server already shows the UI."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if given is None and env and not env.startswith("sqlite:"):
        print(f"note: MLFLOW_TRACKING_URI={env} is not a SQLite store; opening ./mlflow.db instead "
              f"(a tracking server serves its own UI: open {env})", file=sys.stderr)
    try:
        uri = resolve_uri(given or (env if env.startswith("sqlite:") else DEFAULT_URI), Path.cwd(), "--tracking-uri")
    except ConfigError as err:
        raise UiError(str(err)) from err
    if uri.startswith(("http://", "https://")):
        raise UiError(f"{uri} is an MLflow tracking server, which already serves the UI: open {uri} in a browser")
    if not uri.startswith("sqlite:///"):
        raise UiError(f"--tracking-uri {uri!r}: only SQLite stores (sqlite:///path/mlflow.db) are served here; "
                      "for other backends run `mlflow server --backend-store-uri ...` yourself")
    return uri


def check_store_exists(uri: str) -> None:
    """`mlflow server` would silently create an empty store; an empty UI helps nobody."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        raise UiError(f"MLflow store {path} does not exist: create runs first with `make demo` (or point "
                      "--tracking-uri / MLFLOW_TRACKING_URI at an existing sqlite:///.../mlflow.db)")


def check_port_free(host: str, port: int) -> None:
    """Bind the way uvicorn does (SO_REUSEADDR, so a socket in TIME_WAIT is no obstacle, a listener is)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UiError(f"port {port} on {host} is already in use ({err.strerror}); pick another one, "
                          f"e.g. --port {free_port()}") from err


def machine_names() -> list[str]:
    return sorted({socket.gethostname(), socket.getfqdn()} - {"localhost"})


def allowed_hosts(host: str) -> str | None:
    """MLflow answers only requests whose Host header is localhost or a private IP. When it listens on other
    interfaces, clients on the cluster usually name this machine by hostname, so allow that too."""
    if host in LOOPBACK:
        return None
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = machine_names()
    return ",".join([*get_default_allowed_hosts(), *names, *(f"{name}:*" for name in names)])


def local_address(host: str) -> str:
    """How this machine reaches a server that listens on `host`."""
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"[{host}]" if ":" in host else host


def server_command(uri: str, host: str, port: int, hosts: str | None) -> list[str]:
    # Artifacts of SQLite runs live in mlartifacts/ next to the database (orchestration.tracking); runs created
    # through this server (e.g. from other nodes) are uploaded there too, through its artifact proxy.
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--serve-artifacts", "--artifacts-destination", artifact_location(uri),
               "--host", host, "--port", str(port), "--workers", "1"]
    return command + (["--allowed-hosts", hosts] if hosts else [])


class UiServer:
    """One `mlflow server` process group; its output goes to `log_path`."""

    def __init__(self, uri: str | None, port: int = 5000, host: str = "127.0.0.1", hosts: str | None = None) -> None:
        self.uri, self.port, self.host = store_uri(uri), port, host
        self.hosts = hosts or allowed_hosts(host)
        self.url = f"http://{local_address(host)}:{port}"
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, timeout_s: float = 180.0) -> str:
        check_store_exists(self.uri)
        check_port_free(self.host, self.port)
        fd, log = tempfile.mkstemp(prefix=f"mlflow-ui-{self.port}-", suffix=".log")
        self.log_path = Path(log)
        # The job runner alone is ~10 processes and ~2 GB (docs/RAY-MLFLOW.md); the UI needs none of it.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with os.fdopen(fd, "wb") as out:
            # Own session: the terminal's Ctrl-C reaches only us, and we stop the server's whole group in order.
            self.process = subprocess.Popen(server_command(self.uri, self.host, self.port, self.hosts),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UiError(f"mlflow server exited with code {self.process.returncode} before answering; "
                              f"the end of its log:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(0.3)
        raise UiError(f"mlflow server did not answer {self.url}/health within {timeout_s:.0f} s; "
                      f"the end of its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's process group (the mlflow CLI and its uvicorn child), SIGKILL if it lingers;
        the log goes with it."""
        if self.process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not signal_group(self.process.pid, sig) or self.wait_gone(STOP_GRACE_S):
                    break
            self.process.wait()
            self.process = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.poll()  # reap the leader, or the group never looks empty
            if not signal_group(self.process.pid, 0):
                return True
            time.sleep(0.1)
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def serve(uri: str | None, port: int = 5000, host: str = "127.0.0.1", hosts: str | None = None,
          timeout_s: float = 180.0) -> Iterator[str]:
    """Start the UI on `uri` (a SQLite store), yield its URL, stop the server on exit."""
    server = UiServer(uri, port, host, hosts)
    server.start(timeout_s)
    try:
        yield server.url
    finally:
        server.stop()


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.ui",
                                     description="Open the MLflow UI on the project's SQLite store; Ctrl-C stops it.")
    parser.add_argument("--tracking-uri", help="sqlite:///path/mlflow.db (default: $MLFLOW_TRACKING_URI if SQLite, "
                                               "else ./mlflow.db)")
    parser.add_argument("--port", type=int, default=5000, help="default: 5000")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for other machines, e.g. on a "
                             "cluster's head node)")
    parser.add_argument("--allowed-hosts", help="Host headers MLflow accepts (its --allowed-hosts); default: "
                                                "localhost and private IPs, plus this machine's name off loopback")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: must be 1..65535")
    # Ctrl-C, `kill` and a closed terminal all end in the same clean stop of the server (SIGINT explicitly: a
    # shell starts background commands with it ignored, and Python then keeps it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    try:
        server = UiServer(args.tracking_uri, args.port, args.host, args.allowed_hosts)
        if args.host not in LOOPBACK:
            accepted = args.allowed_hosts or f"localhost, private IPs and {', '.join(machine_names())}"
            print(f"warning: --host {args.host} exposes the UI and the tracking API (read and write, no login) to "
                  f"every machine that can reach port {args.port}; MLflow answers requests addressed to {accepted} "
                  "(change with --allowed-hosts); keep other networks out with a firewall", file=sys.stderr)
        server.start()
    except UiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        print(f"MLflow UI for {server.uri} at {server.url}  (server log: {server.log_path}; Ctrl-C stops it)",
              flush=True)
        print(f"training runs: {server.url}/#/experiments?{TRAINING_VIEW}", flush=True)
        if args.host not in LOOPBACK:
            print(f"from other machines: http://{(machine_names() or ['<this machine>'])[-1]}:{args.port}", flush=True)
        code = server.process.wait()
        print(f"error: mlflow server exited with code {code}; the end of its log:\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the MLflow server ...", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
