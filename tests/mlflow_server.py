"""MLflow as teams run it, for tests: `mlflow server` with a PostgreSQL 15 backend store (initdb and pg_ctl into a
temporary folder, reached through a unix socket only), proxied artifacts in a bucket of an S3 server (moto) and
MLflow's basic-auth app. Clients reach it with the standard MLFLOW_TRACKING_* variables and never hold the bucket's
credentials; only the server gets the AWS variables."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import requests

from .helpers import MotoServer

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN, PASSWORD = "admin", "s3cret-test-pass"
ARTIFACT_BUCKET = "mlflow-artifacts"


def as_postgres(*args: str) -> list[str]:
    """PostgreSQL refuses to run as root: its commands run as the `postgres` user when this is root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class Postgres:
    """A PostgreSQL 15 cluster in a temporary folder, reached only through a unix socket in that folder (no TCP
    listener at all), trust authentication for the folder's owner."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its folders are root-only (0700), which the postgres user cannot traverse.
        self.folder = Path(tempfile.mkdtemp(prefix="mupvit-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"

    def start(self) -> None:
        subprocess.run(as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "mlflow"),
                       check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.folder}'"
        subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
                                   "-l", str(self.folder / "postgres.log"), "start"),
                       check=True, capture_output=True, timeout=120)
        for name in ("mlflow", "mlflow_auth"):
            subprocess.run([str(PG_BIN / "createdb"), "-h", str(self.folder), "-U", "mlflow", name],
                           check=True, capture_output=True, timeout=60)

    def uri(self, database: str) -> str:
        return f"postgresql://mlflow@/{database}?host={self.folder}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
                           capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def mlflow_server_command(backend: str, artifacts: str, host: str, port: int) -> list[str]:
    """The command of README's "MLflow server": basic-auth, proxied artifacts, one worker."""
    return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--workers", "1"]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s} s: {log.read_text()[-3000:]}")


def stop_session(process: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and what it started (the server's uvicorn worker)."""
    for signal, wait_s in ((15, 30), (9, 30)):
        try:
            os.killpg(process.pid, signal)
        except ProcessLookupError:  # the group is gone (the server exited by itself)
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


@contextmanager
def mlflow_server(folder: Path, s3: MotoServer, host: str = "127.0.0.1",
                  pg: Postgres | None = None) -> Iterator[SimpleNamespace]:
    """The server on `host` (127.0.0.1; another address only because basic-auth is on), its store in `pg` (a
    started Postgres; one is started here when None), its artifacts in bucket ARTIFACT_BUCKET of the started `s3`
    (created here), its files in `folder`. Yields its url, the client environment (env: MLFLOW_TRACKING_URI and the
    admin's login), log and pid; stops it and PostgreSQL on the way out."""
    import boto3

    from orchestration.ports import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    boto3.client("s3", endpoint_url=s3.url, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket=ARTIFACT_BUCKET)
    process = None
    try:
        if pg is None:
            pg = Postgres()
            pg.start()
        auth_ini = folder / "basic_auth.ini"
        auth_ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {pg.uri('mlflow_auth')}\n"
                            f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        port = free_port(host)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env |= s3.env() | {"MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # CSRF of the auth pages
        log = folder / "server.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                mlflow_server_command(pg.uri("mlflow"), f"s3://{ARTIFACT_BUCKET}/mlflow", host, port), env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://{host}:{port}"
        wait_healthy(url, process, log)
        client_env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN,
                      "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        yield SimpleNamespace(url=url, env=client_env, log=log, pid=process.pid)
    finally:
        try:
            if process is not None:
                stop_session(process)
        finally:
            if pg is not None:
                pg.stop()
