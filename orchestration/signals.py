"""SIGTERM handled as Ctrl-C, so that a driver's cleanup runs however it is stopped (a stop in order, for both
signals: mupvit/stop_signals.py)."""

from __future__ import annotations

import signal
import threading


def interrupt_on_sigterm() -> None:
    """SIGTERM (`kill`, `ray job stop`, a scheduler's preemption) ends this process as Ctrl-C does: as a
    KeyboardInterrupt, so its cleanup runs (a head stopped, an MLflow run marked KILLED). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
