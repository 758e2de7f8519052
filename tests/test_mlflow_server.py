"""MLflow as teams run it: `mlflow server` on 127.0.0.1 with a PostgreSQL 15 backend store, proxied artifacts in a
bucket (moto's S3 server) and MLflow's basic-auth app. One server per module; clients reach it with the standard
MLFLOW_TRACKING_* variables and never hold the bucket's credentials."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
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


def mlflow_server_command(backend: str, artifacts: str, port: int) -> list[str]:
    """The command of README's "MLflow server": basic-auth, proxied artifacts, 127.0.0.1, one worker."""
    return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The server, its URL and the client environment (MLFLOW_TRACKING_URI and the admin's credentials). The AWS
    variables go to the server alone: the clients' artifacts travel through it."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    folder = tmp_path_factory.mktemp("mlflow_server")
    s3, pg, process = MotoServer(), Postgres(), None
    try:
        s3.start()
        boto3.client("s3", endpoint_url=s3.env()["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket=ARTIFACT_BUCKET)
        pg.start()
        auth_ini = folder / "basic_auth.ini"
        auth_ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {pg.uri('mlflow_auth')}\n"
                            f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        from orchestration.ports import free_port

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env |= s3.env() | {"MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # CSRF of the auth pages
        log = folder / "server.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                mlflow_server_command(pg.uri("mlflow"), f"s3://{ARTIFACT_BUCKET}/mlflow", port), env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        client_env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN,
                      "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        yield SimpleNamespace(url=url, env=client_env, s3=s3, log=log, pid=process.pid)
    finally:
        try:
            if process is not None:
                stop_session(process)
        finally:
            pg.stop()
            s3.stop()


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


def test_server_refuses_a_client_without_credentials_or_with_wrong_ones(server):
    search = f"{server.url}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=10).status_code == 401
    assert requests.post(search, json={"max_results": 1}, auth=(ADMIN, "wrong"), timeout=10).status_code == 401
    assert requests.post(search, json={"max_results": 1}, auth=(ADMIN, PASSWORD), timeout=10).ok


def client_env(server: SimpleNamespace, ray_env: dict[str, str], **changes: str) -> dict[str, str]:
    """A driver's environment: the shared head, the server's URI and login, and no bucket credentials at all."""
    env = {k: v for k, v in {**os.environ, **ray_env}.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING_"))}
    return env | server.env | changes


@pytest.mark.slow
def test_a_run_on_the_server_keeps_its_weights_console_log_and_checkpoint(server, ray_env, digits_root, tmp_path,
                                                                          monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestration.tracking import CHECKPOINT_TAG, WEIGHTS_FILE, WEIGHTS_FOLDER

    from .test_orchestration import summary_of, write_config

    config = write_config(tmp_path, digits_root)
    env = client_env(server, ray_env)
    bad = subprocess.run([sys.executable, "-m", "orchestration.train", str(config)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=env | {"MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines() == [
        f"error: MLflow tracking server {server.url} refuses the login of {ADMIN} (HTTP 401); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"], bad.stderr

    summary = summary_of(subprocess.run([sys.executable, "-m", "orchestration.train", str(config)], cwd=tmp_path,
                                        capture_output=True, text=True, timeout=300, env=env))
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(server.url)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[CHECKPOINT_TAG].endswith("/checkpoint.pt")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the server writes the bucket
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"console.log", WEIGHTS_FOLDER, "config.yaml"} <= names, names
    console = Path(client.download_artifacts(run.info.run_id, "console.log", str(tmp_path)))
    assert "step" in console.read_text()

    weights = f"runs:/{run.info.run_id}/{WEIGHTS_FOLDER}/{WEIGHTS_FILE}"
    evaluated = subprocess.run([sys.executable, "-m", "mupvit.evaluate", str(config), "--checkpoint", weights],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["layout"] == "timm"
    final = run.data.metrics
    assert result["val"]["acc1"] == pytest.approx(final["final/val/acc1"], abs=1e-6), (result, final)
