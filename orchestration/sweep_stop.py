"""A sweep stopped by Ctrl-C or SIGTERM: Tune's own graceful stop for both, and a record that it happened.

Ray 2.60's Tuner.fit() catches Ctrl-C itself, stops the running trials, saves the experiment's state and returns
as if the sweep had ended; afterwards nothing tells the two apart (its cleanup marks the stopped trials TERMINATED
in memory). So the sweep takes the signals itself: Tune's Ctrl-C handler is turned off
(TUNE_DISABLE_SIGINT_HANDLER, documented) and ours asks for the same stop through the SIGUSR1 handler that fit()
installs, remembering the signal. SIGTERM, which Ray's driver would answer by exiting mid-fit (a C++ crash dump,
the trials' runs left RUNNING), takes the same path."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from ray import tune

from mupvit.stop_signals import stop_gracefully

# Tune's own lines about the stop: they tell the user to call Tuner.restore(); the sweep says it in its own words.
TUNE_STOP_LINES = ("Stop signal received", "Experiment has been interrupted")


class _WithoutTuneStopLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TUNE_STOP_LINES)


def fit_until_stopped(tuner: tune.Tuner) -> tuple[Any, bool]:
    """(tuner.fit()'s ResultGrid, whether Ctrl-C or SIGTERM stopped it). The first signal during fit stops it as
    Tune stops on Ctrl-C: the running trials end and the experiment's state is saved, so the same command resumes
    them. A signal before fit can stop in order (while the Tuner starts), or a second one, raises KeyboardInterrupt
    out of fit at once; its state is then the one Tune last saved, as after a driver crash."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # read by each fit(): Ctrl-C comes to our handler
    usr1_before = signal.getsignal(signal.SIGUSR1)

    def tune_stop() -> bool:
        handler = signal.getsignal(signal.SIGUSR1)
        if handler is usr1_before or not callable(handler):  # fit() has not installed its handler yet
            return False
        handler(signal.SIGUSR1, None)
        return True

    quiet = _WithoutTuneStopLines()
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(quiet)
    try:
        with stop_gracefully(tune_stop) as received:
            grid = tuner.fit()
    finally:
        tune_log.removeFilter(quiet)
    return grid, bool(received)
