"""`python -m dashboards.ui`: which store it opens, clear exit-2 errors on bad input, and (slow) a real server that
answers until Ctrl-C and leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dashboards.ui import check_port_free, free_port, main, store_uri

REPO = Path(__file__).resolve().parent.parent


def pids_running(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue  # exited while we looked
    return pids


def ui_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dashboards.ui", *args]


def test_store_uri_defaults_to_an_absolute_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/a.db")
    assert store_uri(None) == f"sqlite:///{tmp_path / 'stores' / 'a.db'}"
    assert store_uri("sqlite:///b.db") == f"sqlite:///{tmp_path / 'b.db'}"  # the flag wins over the environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")
    assert store_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert "open http://head:5000" in capsys.readouterr().err


def test_missing_store_says_how_to_create_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nothing" / "mlflow.db"
    assert main(["--tracking-uri", f"sqlite:///{missing}", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "make demo" in err
    assert not missing.exists()  # the server would have created an empty store


def test_server_uri_is_refused_with_a_pointer_to_it(capsys: pytest.CaptureFixture) -> None:
    assert main(["--tracking-uri", "http://head:5000"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "already serves the UI" in err and "http://head:5000" in err


def test_port_in_use_names_the_port_and_suggests_another(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    store.touch()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = subprocess.run(ui_command("--tracking-uri", f"sqlite:///{store}", "--port", str(port)), cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"error: port {port} on 127.0.0.1 is already in use" in done.stderr and "--port " in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_cli_serves_until_ctrl_c_and_leaves_nothing_running(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    store.touch()  # an empty file: the server creates the tables
    port = free_port()
    cli = subprocess.Popen(ui_command("--tracking-uri", f"sqlite:///{store}", "--port", str(port)), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = cli.stdout.readline()  # printed once /health answers
        assert f"at http://127.0.0.1:{port}" in banner, cli.stderr.read() if cli.poll() is not None else banner
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).text == "OK"
        server_pids = pids_running(f"--port {port} --workers 1")
        assert len(server_pids) == 2, server_pids  # the mlflow CLI and its uvicorn
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=60) == 0, cli.stderr.read()
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGTERM)  # a failed assertion must not leave the server up either
            cli.wait(timeout=60)
    assert pids_running(f"--port {port} --workers 1") == []
    check_port_free("127.0.0.1", port)
