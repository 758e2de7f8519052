"""A spot node's SIGTERM to a Ray Train worker: the run saves the step it was at and Ray Train resumes it from there,
as a preemption (not one of cluster.max_failures), ending on the uninterrupted run's parameters bit for bit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mupvit.outputs import HOLDER_NAME

from .helpers import cmdline, ended_at_exit, freeze
from .test_orchestration import STEPS, final_model, loss_history, runs_in, summary_of, write_config

pytestmark = pytest.mark.slow

WORKER = "ray::RayTrainWorker"


def wait_for(condition, what: str, timeout_s: float = 240.0, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(every_s)
    return found


def rank0_console(pid: int) -> Path | None:
    """Rank 0's console log on this node's disk (its scratch folder, locked by the worker's pid): the steps it
    trained, without the delay of Ray's log streaming."""
    for holder in Path("/tmp").glob(f"mupvit-worker-*/{HOLDER_NAME}"):
        try:
            if json.loads(holder.read_text())["pid"] == pid and (holder.parent / "console.log").exists():
                return holder.parent / "console.log"
        except (OSError, ValueError):  # being written or removed
            continue
    return None


def last_step(console: Path) -> int:
    steps = re.findall(r"\[step (\d+)/", console.read_text())
    return int(steps[-1]) if steps else 0


def test_a_sigterm_to_a_worker_saves_its_step_and_the_run_resumes_there_as_if_never_stopped(
        ray_head, ray_env, digits_root, tmp_path, two_worker_run):
    """Two workers, checkpoints every 10 steps, no worker failure allowed (cluster.max_failures=0). Rank 1 gets a
    SIGTERM a few steps in: both ranks save the step they reached and stop, and Ray Train restarts them from that
    checkpoint within the same command. Nothing of the work before the SIGTERM is lost; the run ends on the
    parameters of the uninterrupted 2-worker run, with every step logged once or, where redone, the same values."""
    config = write_config(tmp_path, digits_root, **{"train.ckpt_every": 10})
    sets = ["cluster.num_workers=2", "cluster.max_failures=0", "tracking.run_name=preempted"]
    env = {**ray_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with open(tmp_path / "driver.err", "w+") as err, open(tmp_path / "driver.out", "w+") as out:
        with ended_at_exit(subprocess.Popen([sys.executable, "-m", "orchestration.train", str(config),
                                             *(arg for s in sets for arg in ("--set", s))], cwd=tmp_path, env=env,
                                            stdout=out, stderr=err, start_new_session=True)) as driver:
            rank0 = int(wait_for(lambda: re.search(r"\(RayTrainWorker pid=(\d+)\)", err.seek(0) or err.read()),
                                 "worker line")[1])
            console = wait_for(lambda: rank0_console(rank0), "rank 0's console log")
            wait_for(lambda: last_step(console) >= 2, "step 2")
            freeze(ray_head, WORKER)  # both ranks stop where they are: the step they reached is known
            reached = last_step(console)
            workers = [pid for pid in ray_head.processes() if cmdline(pid).startswith(WORKER)]
            (rank1,) = [pid for pid in workers if pid != rank0]
            os.kill(rank1, signal.SIGTERM)
            signalled = time.monotonic()
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            driver.wait(timeout=300)
            rest_s = time.monotonic() - signalled
        err.seek(0)
        stderr = err.read()
        out.seek(0)
        summary = summary_of(subprocess.CompletedProcess(driver.args, driver.returncode, out.read(), stderr))
    stopped = re.findall(r"mupvit: preempted \(a SIGTERM to another worker\): saved step (\d+), checkpoint "
                         r"\S+/preempted/checkpoint_\S+; Ray Train restarts the workers from it", stderr)
    assert len(stopped) == 1, stderr[-4000:]
    step = int(stopped[0])
    # It stopped at the step it had reached (or the one in flight), between two checkpoints of its own, and the
    # restarted workers began there: not at the last periodic checkpoint (none yet), nor at step 0.
    assert reached <= step <= reached + 2 and step % 10, (reached, step)
    assert f"start_step={step}, resumed_from=" in stderr, stderr[-4000:]
    # The workers handed the run over once saved: no wait for Ray Train's 120 s deadline of a notice without one.
    assert rest_s < 100, rest_s
    assert "Traceback" not in stderr and "Error in training function" not in stderr, stderr[-4000:]
    (run,) = runs_in(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["num_workers"] == "2" and run.data.params["train.devices"] == "2"
    history = loss_history(tmp_path, run.info.run_id)
    assert sorted(history) == list(range(1, STEPS + 1))
    assert all(len(set(values)) == 1 for values in history.values())
    a, b = final_model(summary), two_worker_run  # two plain ranks: Ray Train and the restart change no bit
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key
