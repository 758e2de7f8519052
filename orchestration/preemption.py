"""Spot nodes: a preemption notice makes a run's workers save the step they are at, and Ray Train restarts them from
that checkpoint at once, as a preemption: retried always (FailureConfig.max_preemption_failures -1), apart from
cluster.max_failures.

Two notices reach a worker. Ray's own: a node drained for preemption (`ray drain-node --reason
DRAIN_NODE_REASON_PREEMPTION`, what an autoscaler or KubeRay sends on a spot reclaim notice), after which Ray Train's
PreemptionWatcher marks every worker of the run. And a SIGTERM to a worker's process (its node shutting down, a
`kill`): SigtermIsPreemption marks that worker the same way, in place of Ray's own handler, which ends the process at
once and loses the steps since the last checkpoint.

Then: the training loop asks `notice_received` after every step; the ranks agree (mupvit.train.StopVote: one rank's
notice stops all at the same step) and save that step's checkpoint; `hand_over` moves the notice's deadline to now.
Ray Train's controller, which has held the worker group in its preempting state since it saw the notice, then ends
it with a PreemptionError and starts a new one from that checkpoint (on the nodes left: a drained node takes no new
workers). Without the hand-over it would wait for the drained node to die or for the deadline (120 s without one).

Ray Train 2.60 has no public hook in a worker's main thread, the only thread where Python installs a signal handler,
nor a public setter of a worker's notice: SigtermIsPreemption is a WorkerCallback (passed in RunConfig's callbacks,
which Ray Train hands to every worker), and the notice is the train context's preemption_context, which Ray's
PreemptionWatcher writes and its controller polls (tests/test_preemption.py runs all of it on Ray Train).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, NoReturn

import ray
from ray.train import PreemptionInfo
from ray.train.v2._internal.execution.callback import WorkerCallback
from ray.train.v2._internal.execution.context import get_train_context

# How long a worker that handed its run over waits for Ray Train to end it (a few polls) before it calls it a failure.
HAND_OVER_TIMEOUT_S = 300.0


def notice_received() -> bool:
    """Whether this worker has a preemption notice (Ray's or a SIGTERM); asked by the training loop every step."""
    return get_train_context().preemption_context.preemption_info is not None


class SigtermIsPreemption(WorkerCallback):
    """A worker's first SIGTERM is a preemption notice for its rank (the loop then saves and hands over); a second one
    ends the process at once, as Ray's own handler does."""

    def after_init_train_context(self) -> None:  # in the worker actor's main thread (see the module's docstring)
        context = get_train_context()
        rank, node = context.get_world_rank(), ray.get_runtime_context().get_node_id()
        ray_handler = signal.getsignal(signal.SIGTERM)
        received: list[int] = []

        def on_sigterm(signum: int, frame: Any) -> None:
            if received and callable(ray_handler):
                ray_handler(signum, frame)
            received.append(signum)
            if context.preemption_context.preemption_info is None:  # a drain's notice already there stands
                context.preemption_context.preemption_info = PreemptionInfo(
                    deadline_ms=None, preempted_node_to_ranks={node: [rank]})

        signal.signal(signal.SIGTERM, on_sigterm)


def describe(info: PreemptionInfo | None) -> str:
    if info is None:
        return "a SIGTERM to another worker"
    deadline = f", node reclaimed at {info.deadline_ms / 1000:.0f} s Unix time" if info.deadline_ms else ""
    return f"notice for rank(s) {info.preempted_ranks} on node(s) {', '.join(info.preempted_node_ids)}{deadline}"


def hand_over(step: int, checkpoint: str) -> NoReturn:
    """Every rank, once the checkpoint of `step` is reported: let Ray Train end the worker group now and restart it
    from that checkpoint, and wait for it. ray.train.get_preemption_info (rank 0's notice, for the console line) is
    a barrier: past it, every rank's report is in its queue, which the controller empties in the same poll that
    sees the new deadline, so the checkpoint is registered before the workers are ended."""
    info = ray.train.get_preemption_info()
    context = get_train_context()
    if context.get_world_rank() == 0:
        sys.stderr.write(f"mupvit: preempted ({describe(info)}): saved step {step}, checkpoint {checkpoint}; Ray "
                         "Train restarts the workers from it\n")
        sys.stderr.flush()
    own = context.preemption_context.preemption_info
    context.preemption_context.preemption_info = PreemptionInfo(  # every rank: the controller reads the first one's
        deadline_ms=int(time.time() * 1000), preempted_node_to_ranks=own.preempted_node_to_ranks if own else {})
    time.sleep(HAND_OVER_TIMEOUT_S)
    raise RuntimeError(f"preempted after step {step}, but Ray Train did not end the worker group within "
                       f"{HAND_OVER_TIMEOUT_S:.0f} s; the run resumes from that step's checkpoint")
