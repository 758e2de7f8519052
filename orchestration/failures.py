"""Which failures of a run's workers a retry can fix. A killed worker or a lost node: Ray Train restarts the worker
group from the last checkpoint, up to cluster.max_failures times. An error of the input (a bad image, a bad weights
file, a bad config value, a full disk) or a diverged loss: resumed exactly, the run meets it again at the same step,
so it stops at the first one with its own message instead of restarting into it and ending as a crash.

Ray Train 2.60 takes no failure policy of ours (TorchTrainer.fit builds its DefaultFailurePolicy itself, which retries
every worker error); its supported hook is a UserCallback, run in the controller after each poll that found worker
errors. A ControllerError raised there is not retryable (only worker-group start-up failures are), so the controller
stops the workers and fit() raises it, carrying the worker's exception."""

from __future__ import annotations

from typing import Any

from ray.train import ControllerError, TrainingFailedError, UserCallback, WorkerGroupError

from mupvit.config import ConfigError
from mupvit.data import DataError
from mupvit.errors import OutputError
from mupvit.train import TrainingDiverged

# Deterministic: the same checkpoint, data and config fail the same way on every attempt.
NOT_RETRIED = (ConfigError, DataError, OutputError, TrainingDiverged)
FAILURE_TAG = "failure_reason"  # the MLflow tag of a FAILED run: why, in one line


class StopOnInputErrors(UserCallback):
    """Ends the run at the first worker error in NOT_RETRIED (see the module's docstring)."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for _, err in sorted(worker_exceptions.items()):
            if isinstance(err, NOT_RETRIED):
                raise ControllerError(err)


def not_retried(err: BaseException) -> BaseException | None:
    """The worker's exception that StopOnInputErrors stopped the run on; None for any other failure."""
    if isinstance(err, ControllerError) and isinstance(err.controller_failure, NOT_RETRIED):
        return err.controller_failure
    return None


def describe_failure(err: BaseException) -> str:
    """A failed run in one line, for the console and the MLflow tag: a worker's own error as it said it; Ray Train's
    (restarts used up, workers that cannot start) as its first statement and what to do."""
    if isinstance(err, NOT_RETRIED):
        return str(err)
    if isinstance(err, WorkerGroupError) and err.worker_failures:
        _, first = min(err.worker_failures.items())
        text = str(first).strip().splitlines()
        return f"{type(first).__name__}: {text[0] if text else 'no message'}"[:400]
    if isinstance(err, TrainingFailedError):
        lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().endswith(":")]
        reason = (lines[0] if lines else type(err).__name__).split(" Potential causes")[0]
        if "worker group startup timed out" in reason:
            reason += (" (cluster.resource_wait_s): the cluster no longer has the workers' resources, e.g. a node "
                       "was lost; add one or lower cluster.num_workers, then run the same command to resume")
        return reason[:400]
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no message'}"[:400]
