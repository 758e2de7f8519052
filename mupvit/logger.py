"""The small interface through which the training loop reports. Orchestration implements it for MLflow;
mupvit itself ships the console logger with a progress line."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from mupvit.results import describe_eval


class RunLogger:
    """Base class: every hook is optional. `step` is the number of completed optimiser steps."""

    def start(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        """Called once per (re)start with the resolved config and facts such as total_steps, start_step."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Train metrics (`train/loss`, ...), eval metrics (`val/acc1`, ...) and results (`acc1_at_90ep`)."""

    def checkpoint(self, step: int, path: str | None) -> None:
        """A checkpoint was written atomically at `path` (called on every rank; None where rank != 0)."""

    def end(self, summary: dict[str, Any]) -> None:
        """The run finished (or stopped at the requested step) with this summary."""


class MultiLogger(RunLogger):
    def __init__(self, *loggers: RunLogger) -> None:
        self.loggers = loggers

    def start(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.start(config, info)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for lg in self.loggers:
            lg.metrics(step, values)

    def checkpoint(self, step: int, path: str | None) -> None:
        for lg in self.loggers:
            lg.checkpoint(step, path)

    def end(self, summary: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.end(summary)


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ConsoleLogger(RunLogger):
    """Human-readable progress on stderr (stdout stays free for the JSON summary)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total_steps, self.start_step, self.t0 = 1, 0, time.perf_counter()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        self.total_steps, self.start_step = info["total_steps"], info["start_step"]
        self.t0 = time.perf_counter()
        facts = ", ".join(f"{k}={v}" for k, v in info.items())
        self._print(f"run: {facts}")

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if "train/loss" in values:
            done = (step - self.start_step) / max(1, self.total_steps - self.start_step)
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / done * (1 - done) if done > 0 else 0.0
            self._print(
                f"[step {step}/{self.total_steps} {100 * step / self.total_steps:5.1f}%] "
                f"loss {values['train/loss']:.4f}  lr {values['train/lr']:.2e}  "
                f"grad_norm {values['train/grad_norm']:.3f}  {values['train/images_per_s']:.0f} img/s  "
                f"data {100 * values['train/data_time_frac']:.0f}%  eta {_eta(eta)}"
                + (f"  skipped {values['train/skipped_images']:.0f} bad image(s)"
                   if values.get("train/skipped_images") else "")
                + (f"  {values['train/recovered_images']:.0f} image(s) of corrupt JPEG data"
                   if values.get("train/recovered_images") else "")
            )
        others = {k: v for k, v in values.items() if not k.startswith("train/")}
        if others:
            self._print(f"[step {step}] " + "  ".join(f"{k} {v:.4f}" for k, v in others.items()))

    def checkpoint(self, step: int, path: str | None) -> None:
        self._print(f"[step {step}] checkpoint {path}")

    def end(self, summary: dict[str, Any]) -> None:
        for name, res in summary.get("eval", {}).items():
            self._print(f"final {name}: {describe_eval(res)}")
        self._print(f"{summary['steps']} steps in {summary['wall_s']:.1f} s ({summary['images_per_s']:.0f} img/s)"
                    + (f", {summary['skipped_images']} bad image(s) skipped" if summary.get("skipped_images") else ""))
