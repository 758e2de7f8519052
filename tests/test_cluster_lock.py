"""The one-driver lock of a bucket run (orchestration/run_storage.py ClusterLock: a named actor in the Ray cluster)
on the session's shared head: a second driver is refused naming the first, and a SIGKILLed holder frees the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

KEY = "s3://bucket/ray/locked"
# A driver that takes the run's lock, says so, and holds it until it is killed.
HOLD = f"""
import sys, time, ray
from orchestration.run_storage import ClusterLock
ray.init(logging_level="ERROR")
try:
    with ClusterLock({KEY!r}, "run locked"):
        print("held", flush=True)
        time.sleep(600)
except Exception as err:
    print(f"refused: {{err}}", flush=True)
"""


def take_lock(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def first_line(driver: subprocess.Popen) -> str:
    line = driver.stdout.readline().strip()
    assert line, driver.communicate(timeout=30)[1][-3000:]
    return line


def test_a_killed_driver_frees_its_bucket_run_for_the_next(ray_env):
    holder = take_lock(ray_env)
    try:
        assert first_line(holder) == "held"
        second = take_lock(ray_env)
        line = first_line(second)
        second.wait(timeout=60)
        assert line.startswith(f"refused: run locked: {KEY} is in use by pid {holder.pid} on "), line
        os.killpg(holder.pid, signal.SIGKILL)  # no __exit__: only Ray's end of the driver's job can free the run
        holder.wait(timeout=30)
        deadline = time.monotonic() + 60
        while True:
            holder = take_lock(ray_env)
            line = first_line(holder)
            if line == "held" or time.monotonic() > deadline:
                break
            holder.wait(timeout=60)
            time.sleep(1)
        assert line == "held", f"the run is still locked 60 s after its driver was killed: {line}"
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
