"""MLflow as teams run it (tests/mlflow_server.py: PostgreSQL store, proxied artifacts in moto's S3, basic-auth on
127.0.0.1), the checks that need no Ray: one server per module. A run through Ray on such a server (on a second host,
its weights evaluated from runs:/) is in tests/test_second_host.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import requests
from mlflow.tracking import MlflowClient

from .helpers import MotoServer, tiny_launch
from .mlflow_server import ADMIN, PASSWORD, mlflow_server


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The server, its URL and the client environment (MLFLOW_TRACKING_URI and the admin's login)."""
    s3 = MotoServer()
    s3.start()
    try:
        with mlflow_server(tmp_path_factory.mktemp("mlflow_server"), s3) as server:
            yield server
    finally:
        s3.stop()


def client_env(server: SimpleNamespace, **changes: str) -> dict[str, str]:
    """A client's environment: the server's URI and login, no bucket credentials and no Ray cluster to join (an
    address where nothing listens: a command that tried to join would fail another way)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING_", "RAY_ADDRESS"))}
    return env | server.env | {"RAY_ADDRESS": "127.0.0.1:9"} | changes


def test_server_refuses_a_client_without_credentials_or_with_wrong_ones(tracking_server):
    search = f"{tracking_server.url}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=10).status_code == 401
    assert requests.post(search, json={"max_results": 1}, auth=(ADMIN, "wrong"), timeout=10).status_code == 401
    assert requests.post(search, json={"max_results": 1}, auth=(ADMIN, PASSWORD), timeout=10).ok


def test_a_wrong_password_is_one_line_and_exit_2_before_any_cluster_work(tracking_server, digits_root, tmp_path):
    from .test_orchestration import write_config

    config = write_config(tmp_path, digits_root)
    bad = subprocess.run([sys.executable, "-m", "orchestration.train", str(config)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=client_env(tracking_server, MLFLOW_TRACKING_PASSWORD="wrong"))
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines() == [
        f"error: MLflow tracking server {tracking_server.url} refuses the login of {ADMIN} (HTTP 401); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"], bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_the_report_reads_a_run_of_the_server(tracking_server, digits_root, tmp_path, monkeypatch, capsys):
    """A run recorded as orchestration records it (params, tags, metrics, the resolved record as an artifact that
    travels through the server), then `python -m dashboards.report` (its main, in this process: no second start of
    Python and its imports) with the server's URI and login in the environment."""
    from dashboards.report import main

    from .test_report import TINY_TRAIN, record

    for key, value in tracking_server.env.items():
        monkeypatch.setenv(key, value)
    launch = tiny_launch(digits_root, tmp_path / "run", **{
        "train.total_steps": None, "train.eval_every": None, "train.ckpt_every": None, "train.epochs": 1,
        "train.eval_at_epochs": [1], "optim.warmup_steps": 0, "tracking.experiment": "served", **TINY_TRAIN})
    run_id = record(tracking_server.url, launch, "served-run")
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["--out", str(out)]) == 0, capsys.readouterr().err[-3000:]
    printed = capsys.readouterr()
    assert printed.out.strip().splitlines()[-1] == str(out / "report.html")
    assert f"report: reading runs from {tracking_server.url}" in printed.err, printed.err[-2000:]
    (row,) = list(csv.DictReader((out / "tables" / "reproduction.csv").open()))
    assert row["run"] == "served-run" and row["run id"] == run_id and row["status"] == "FINISHED", row
    acc1 = MlflowClient(tracking_server.url).get_run(run_id).data.metrics["acc1_at_1ep"]
    assert float(row["top-1 @1ep (%)"]) == pytest.approx(round(100 * acc1, 2)), row
    assert row["width"] == "32", row  # from the resolved record: an artifact read back through the server
    assert "served-run" in (out / "report.html").read_text()
