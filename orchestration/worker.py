"""What each Ray Train worker runs: the unchanged mupvit loop, with loggers that report checkpoints and evals to
Ray Train (every rank, since `ray.train.report` is a barrier) and record the run in MLflow (rank 0)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import ray.train
import ray.train.torch

from mupvit.config import config_from_dict
from mupvit.logger import ConsoleLogger, MultiLogger, RunLogger
from mupvit.train import run
from orchestration.tracking import MlflowLogger

CHECKPOINT_FILE = "checkpoint.pt"


def fetch_checkpoint(checkpoint: ray.train.Checkpoint | None, local: Path) -> Path | None:
    """Copy the mupvit checkpoint inside a Ray (Train or Tune) checkpoint into `local`; None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        target = local / CHECKPOINT_FILE
        shutil.copy2(Path(folder) / CHECKPOINT_FILE, target)
    return target


@contextmanager
def checkpoint_folder(path: str, **notes: str) -> Iterator[str]:
    """A temporary folder holding the checkpoint file (plus small text notes), for Ray to persist."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(path, Path(tmp) / CHECKPOINT_FILE)
        for name, text in notes.items():
            (Path(tmp) / name).write_text(text)
        yield tmp


class InjectedFailure(RuntimeError):
    """Raised once by cluster.fail_at_step to prove that a worker failure loses nothing."""


class RayReporter(RunLogger):
    """Hands each checkpoint to Ray Train (which persists it to storage) and reports eval metrics, so that a
    restarted worker group and Tune's schedulers see them. Called identically on every rank."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.latest: dict[str, Any] = {}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if any(not k.startswith("train/") for k in values):  # an eval: report it (Tune/ASHA read these)
            self.latest.update({k: v for k, v in values.items() if not k.startswith("train/")})
            ray.train.report({"step": step, **self.latest})

    def checkpoint(self, step: int, path: str | None) -> None:
        if path is None:
            ray.train.report({"step": step, **self.latest}, checkpoint=None)
            return
        with checkpoint_folder(path, mlflow_run_id=self.run_id) as folder:  # the run this checkpoint belongs to
            ray.train.report({"step": step, **self.latest}, checkpoint=ray.train.Checkpoint.from_directory(folder))


class FailOnce(RunLogger):
    """cluster.fail_at_step: raise at the first logged step >= k, once per run (a marker file remembers)."""

    def __init__(self, step: int, marker: Path) -> None:
        self.step, self.marker = step, marker

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if step >= self.step and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(str(step))
            raise InjectedFailure(f"injected failure at step {step} (cluster.fail_at_step={self.step})")


class Tee:
    """A text stream that writes to several streams (the worker's stderr and the console log file)."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: resume from Ray's latest checkpoint, else start, and train."""
    cfg = config_from_dict(loop_config["config"])
    rank = ray.train.get_context().get_world_rank()
    run_dir = Path(loop_config["run_dir"])
    local = Path(tempfile.mkdtemp(prefix="mupvit-worker-"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(local), resume=False))
    resume_from = fetch_checkpoint(ray.train.get_checkpoint(), local)
    loggers: list[RunLogger] = [RayReporter(loop_config["run_id"])]
    console = None
    if rank == 0:
        console = (run_dir / "console.log").open("a")
        loggers = [ConsoleLogger(Tee(sys.stderr, console)),
                   MlflowLogger(loop_config["tracking_uri"], loop_config["run_id"], run_dir / "console.log"),
                   *loggers]
        if cfg.cluster.fail_at_step is not None:
            loggers.append(FailOnce(cfg.cluster.fail_at_step, run_dir / "injected_failure.done"))
    try:
        run(cfg, MultiLogger(*loggers), device=ray.train.torch.get_device(), resume_from=resume_from)
    finally:
        if console is not None:
            console.close()
        shutil.rmtree(local, ignore_errors=True)
