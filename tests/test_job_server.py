"""What `make demo` leaves out of a job's log on the console: Ray's housekeeping only (lines copied from a real
demo job's log), never the run's own lines or another error of Ray's."""

from __future__ import annotations

import pytest

from orchestration.job_server import housekeeping

RAY_LINES = [
    "2026-12-07 18:04:51,933\tINFO job_manager.py:581 -- Runtime env is setting up.",
    "Running entrypoint for job raysubmit_8ywUESK81a5gGTJR: python -m orchestration.train "
    "experiments/demo_digits.yaml --summary-json /tmp/fresh_demo/runs/demo_summary.json",
    "(TrainController pid=15858) [2026-12-07 18:05:31,411 E 15858 15896] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: 'f3a2baa3a9c6c28d6c9caab402000000' has constructor arguments in the object store "
    "and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart will "
    "fail. See https://github.com/ray-project/ray/issues/53727 for more details.",
]

RUN_LINES = [
    "orchestration: connecting: Ray cluster at 127.0.0.1:6379",
    "(RayTrainWorker pid=16016) [step 25/534   4.7%] loss 2.1881  lr 1.44e-03  grad_norm 1.610  206 img/s  data 2%",
    "(RayTrainWorker pid=16016) final val: top-1 98.05%  top-5 100.00%  loss 0.1192",
    # Ray's own errors stay: another C++ error, the same notice for another actor, a job manager error.
    "(TrainController pid=15858) [2026-12-07 18:05:31,411 E 15858 15896] core_worker.cc:1234: Failed to connect "
    "to the GCS",
    "(TrainController pid=15858) [2026-12-07 18:05:31,411 E 15858 15896] core_worker.cc:2465: Actor with class name: "
    "'MyActor' and ID: 'f3a2' has constructor arguments in the object store and max_restarts > 0.",
    "2026-12-07 18:04:51,933\tERROR job_manager.py:600 -- Runtime env setup failed",
    "Running the entrypoint failed",
]


@pytest.mark.parametrize("line", RAY_LINES)
def test_rays_housekeeping_lines_are_left_out(line):
    assert housekeeping(line)


@pytest.mark.parametrize("line", RUN_LINES)
def test_the_runs_lines_and_rays_errors_stay(line):
    assert not housekeeping(line)
