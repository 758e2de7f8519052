"""SIGTERM handled as Ctrl-C, so that a driver's cleanup runs however it is stopped."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def interrupt_on_sigterm() -> None:
    """SIGTERM (`kill`, `ray job stop`, a scheduler's preemption) ends this process as Ctrl-C does: as a
    KeyboardInterrupt, so its cleanup runs (a head stopped, an MLflow run marked KILLED). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def stop_gracefully(stop: Callable[[], bool]) -> Iterator[list[int]]:
    """Within the block, the first Ctrl-C or SIGTERM asks `stop` to end the work in order (it returns False when it
    cannot yet) and is recorded in the yielded list, so the caller tells a stopped block from a finished one by
    that record, not by timing. A second signal, or one that `stop` cannot take, raises KeyboardInterrupt as
    Ctrl-C does. Main thread only (elsewhere nothing is installed); the earlier handlers come back at the end."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(sig: int, frame: Any) -> None:
        first = not received
        received.append(sig)
        if not (first and stop()):
            raise KeyboardInterrupt

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)
