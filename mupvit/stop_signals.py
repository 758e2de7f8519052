"""Ctrl-C and SIGTERM as a request to stop in order: the trainer's CLI saves the step it reached, a sweep's driver
stops its trials as Tune does (orchestration/sweep_stop.py)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


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
