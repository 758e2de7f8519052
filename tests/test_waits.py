"""Nothing the driver does waits without a bound or in silence, a second driver of a run is refused before it waits,
and what killed workers leave on a node's disk is removed by the next worker there (issue 24)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mupvit.outputs import FolderLock
from orchestration.scratch import scratch_folder
from orchestration.train import main

from .test_orchestration import orchestrate, runs_in, write_config

REPO = Path(__file__).resolve().parent.parent

# Another job: an actor holding both CPUs of the shared head until this process is stopped.
HOLD_CPUS = """import time, ray
ray.init()
holder = ray.remote(num_cpus=2)(type("Holder", (), {"ready": lambda self: True})).remote()
ray.get(holder.ready.remote())
print("held", flush=True)
time.sleep(600)
"""

# A worker's life in its scratch folder: a checkpoint written there, then training "forever".
HOLD_SCRATCH = """import time
from orchestration.scratch import scratch_folder
with scratch_folder() as folder:
    (folder / "checkpoint.pt").write_bytes(bytes(1000))
    print(folder, flush=True)
    time.sleep(600)
"""


def test_a_busy_cluster_is_waited_for_at_most_resource_wait_s_saying_for_what(ray_env, digits_root, tmp_path):
    """The data probe ran before any bounded wait: with every CPU held, the driver sat silent for as long as that."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CPUS], env=ray_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = orchestrate(tmp_path, write_config(tmp_path, digits_root), ray_env, "cluster.resource_wait_s=3",
                           timeout=120)
    finally:
        holder.terminate()
        holder.wait()
    assert done.returncode == 2, done.stderr[-3000:]
    held = "other jobs hold 2 of the cluster's 2 CPU"
    assert f"orchestration: waiting up to 3 s for 1 CPU on a worker node to probe the data ({held})" in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: waited 3 s for 1 CPU on a worker node to probe the data, but {held}; wait for them to "
                      "finish or raise cluster.resource_wait_s"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert runs_in(tmp_path) == [] if (tmp_path / "mlflow.db").exists() else True
    assert not (tmp_path / "ray_results").exists()  # nor the run's lock folder


def test_a_second_driver_of_a_run_is_refused_before_it_waits(digits_root, tmp_path, monkeypatch, capsys):
    """A second driver of a run is refused at once, naming the first, before it connects to Ray or waits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = write_config(tmp_path, digits_root, **{"tracking.run_name": "twin"})
    run_folder = tmp_path / "ray_results" / "twin"
    # cluster.address: nothing listens there, so a driver that tried Ray before the lock would fail on that instead
    with FolderLock(run_folder, "run twin"):  # the first driver
        (run_folder / "checkpoint_000000").mkdir()
        started = time.monotonic()
        code = main([str(config), "--set", "cluster.address=127.0.0.1:9"])
        elapsed = time.monotonic() - started
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: run twin: {run_folder} is in use by pid "), err
    assert elapsed < 10
    assert (run_folder / "checkpoint_000000").is_dir()  # the first driver's work is untouched
    assert runs_in(tmp_path) == [] if (tmp_path / "mlflow.db").exists() else True


def test_a_new_worker_removes_the_scratch_of_killed_workers_and_no_live_ones(tmp_path, monkeypatch, capsys):
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}  # the workers' temp dir: this test's own
    workers = [subprocess.Popen([sys.executable, "-c", HOLD_SCRATCH], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                text=True) for _ in range(2)]
    try:
        dead, live = (Path(worker.stdout.readline().strip()) for worker in workers)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        assert (dead / "checkpoint.pt").is_file()  # what a killed worker leaves behind
        starting = tmp_path / "mupvit-worker-starting"  # made, not locked yet: left alone
        starting.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        with scratch_folder() as mine:  # the next worker on this node
            assert not dead.exists()
            assert (live / "checkpoint.pt").is_file() and starting.is_dir() and mine.is_dir()
        assert not mine.exists()
        assert capsys.readouterr().err == f"mupvit: removed 1 scratch folder(s) that dead workers left in {tmp_path}\n"
    finally:
        workers[1].kill()
        workers[1].wait()
