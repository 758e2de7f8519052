"""Batches handed to the step already on its device: the copy of the next batch overlaps the current step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


class DevicePrefetcher(Iterator):
    """Iterates over `batches`, `to_device(batch)` applied one batch ahead.

    On CUDA the copies are issued on a side stream (non-blocking, from the loader's pinned memory) before the
    previous batch is handed out, so they run while that batch's step computes; the compute stream waits for them
    only when the batch is taken. Elsewhere the copy is the plain `to_device` call, one batch ahead.

    An error of the loader (e.g. a file that does not decode) is raised when the batch it belongs to is asked for,
    not one step early: the step before it still runs, and the loop's "stopped at step" stays right.
    """

    def __init__(self, batches: Iterable, device: torch.device, to_device: Callable[[Any], Any]) -> None:
        self.batches, self.device, self.to_device = iter(batches), device, to_device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pending: Any = None
        self.error: BaseException | None = None
        self._fetch()

    def _fetch(self) -> None:
        try:
            batch = next(self.batches)
        except Exception as err:  # the end (StopIteration) or a loader error: kept for the step it belongs to
            self.pending, self.error = None, err
            return
        with torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext():
            self.pending = self.to_device(batch)

    def __next__(self) -> Any:
        if self.error is not None:
            error, self.error = self.error, StopIteration()  # after an error or the end: nothing more
            raise error
        batch = self.pending
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tensor in _tensors(batch):  # their memory belongs to the compute stream from here on
                if tensor.is_cuda:
                    tensor.record_stream(current)
        self._fetch()
        return batch


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for item in batch:
            yield from _tensors(item)
