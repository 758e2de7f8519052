"""What each Ray Train worker runs: the unchanged mupvit loop, with loggers that report checkpoints and evals to
Ray Train (every rank, since `ray.train.report` is a barrier) and record the run in MLflow (rank 0)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import ray.train
import ray.train.torch

from mupvit.config import Config, config_from_dict
from mupvit.errors import OutputError
from mupvit.logger import ConsoleLogger, MultiLogger, RunLogger
from mupvit.results import LOSS_WINDOW
from mupvit.train import StopRequested, TrainingDiverged, run
from orchestration.failures import NOT_RETRIED
from orchestration.launch_config import ClusterConfig
from orchestration.preemption import hand_over, notice_received
from orchestration.ray_data_input import train_batches
from orchestration.run_storage import StoredFile
from orchestration.scratch import scratch_folder
from orchestration.tracking import MlflowLogger

CHECKPOINT_FILE = "checkpoint.pt"
# A checkpoint that Ray cannot store for want of room: the same on every retry, so the run stops (OutputError).
STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
RAY_PACKAGE = str(Path(ray.__file__).parent)


class RayInfoFilter(logging.Filter):
    """Keeps Ray's own INFO records ("Reporting training result ...", "Checkpoint successfully created at ...") off
    the console: Ray Train's LoggingConfig level filters loggers named ray.train.*, but some of its modules log
    under their file's path. They still reach the session's ray-train log files. So does the traceback that Ray
    Train logs when the loop ends on an error that is not retried (`stopping`): the driver prints its one line."""

    stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(RAY_PACKAGE):
            return True
        if self.stopping and record.getMessage().startswith("Error in training function"):
            return False
        return record.levelno >= logging.WARNING


def quiet_ray_console() -> None:
    """RayInfoFilter on the console handlers Ray Train set up on this worker's root logger (Ray Data's own logger
    is at WARNING in every process of the run: orchestration.cluster.run_env)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(RayInfoFilter())


def fetch_checkpoint(checkpoint: ray.train.Checkpoint | None, local: Path) -> Path | None:
    """Copy the mupvit checkpoint inside a Ray (Train or Tune) checkpoint into `local`; None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        target = local / CHECKPOINT_FILE
        shutil.copy2(Path(folder) / CHECKPOINT_FILE, target)
    return target


def stored_folders(storage: str | None) -> set[Path]:
    """The checkpoint folders in a run's local storage folder (none known for a bucket)."""
    if storage is None or "://" in storage:
        return set()
    return {folder for folder in Path(storage).glob("checkpoint_*") if folder.is_dir()}


@contextmanager
def checkpoint_folder(path: str, **notes: str) -> Iterator[str]:
    """A temporary folder holding the checkpoint file (plus small text notes), for Ray to persist. It is made next to
    the checkpoint, in the worker's scratch folder: a worker killed mid-report leaves it to the next one's cleanup."""
    with tempfile.TemporaryDirectory(prefix="ray-report-", dir=Path(path).parent) as tmp:
        shutil.copy2(path, Path(tmp) / CHECKPOINT_FILE)
        for name, text in notes.items():
            (Path(tmp) / name).write_text(text)
        yield tmp


class InjectedFailure(RuntimeError):
    """Raised once by cluster.fail_at_step to prove that a worker failure loses nothing."""


class RayReporter(RunLogger):
    """Reports to Ray through `api` (ray.train in Train workers, ray.tune in a Tune function trial): each eval,
    each checkpoint (which travels with the report, so a restarted worker group or trial resumes from it), and,
    when `every` > 0, every `every` logged steps with a running-mean train loss, so ASHA can stop a sweep trial.
    `before_report` runs first (the MLflow flush: a trial stopped at a report keeps what it logged). Called
    identically on every rank, since ray.train.report is a barrier; only rank 0 has a checkpoint path."""

    def __init__(self, api: ModuleType, *, every: int = 0, before_report: Callable[[], None] = lambda: None,
                 notes: dict[str, str] | None = None, storage: str | None = None) -> None:
        self.api, self.every, self.before_report, self.notes = api, every, before_report, notes or {}
        self.latest: dict[str, Any] = {}
        self.losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        self.logged = 0
        self.storage = storage  # where Ray stores the run's checkpoints (cluster.storage_path/<run>), if known
        # Each local checkpoint file (in the scratch folder, gone with it) -> where Ray stored it, newest last.
        self.stored: dict[str, str] = {}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        evaluated = any(not k.startswith("train/") for k in values)
        if "train/loss" in values:
            self.losses.append(values["train/loss"])
            self.logged += 1
        if self.every:
            self.latest.update(values)
            if self.losses:
                self.latest["train/loss_avg"] = sum(self.losses) / len(self.losses)
        elif evaluated:
            self.latest.update({k: v for k, v in values.items() if not k.startswith("train/")})
        if evaluated or (self.every and "train/loss" in values and self.logged % self.every == 0):
            self.report(step)

    def checkpoint(self, step: int, path: str | None) -> None:
        if path is None:
            self.report(step)
            return
        before = stored_folders(self.storage)
        with checkpoint_folder(path, **self.notes) as folder:
            try:
                self.report(step, self.api.Checkpoint.from_directory(folder))
            except OSError as err:
                if err.errno not in STORAGE_FULL:
                    raise
                raise self.storage_full(step, err, before) from None
        self.remember(path, self.api.get_checkpoint() if self.api is ray.train else None)

    def storage_full(self, step: int, err: OSError, before: set[Path]) -> OutputError:
        """The error for a checkpoint that Ray could not store for want of room, once the folder it was writing is
        removed (a local storage: the run's lock keeps any other writer out): it names the newest stored one."""
        for partial in stored_folders(self.storage) - before:
            shutil.rmtree(partial, ignore_errors=True)
        kept = next(reversed(self.stored.values()), None)
        return OutputError(
            f"cluster.storage_path: cannot store the checkpoint of step {step} in {self.storage or 'storage'} "
            f"({os.strerror(err.errno)}); newest checkpoint kept: {kept or 'none (the run starts over)'}. Free "
            "space there and run the same command to resume")

    def remember(self, local: str | Path, stored: Any) -> None:
        """`local` was stored by Ray as the checkpoint `stored` (None: unknown)."""
        if stored is not None:  # a URL for a bucket (pyarrow's paths have no scheme), a path for a local disk
            scheme = stored.filesystem.type_name
            self.stored[str(local)] = stored.path if scheme == "local" else f"{scheme}://{stored.path}"

    def in_storage_terms(self, err: Exception) -> Exception:
        """`err`, its local checkpoint paths (gone with the worker's scratch folder) replaced by where Ray stored
        them: the checkpoint a resume starts from."""
        text = str(err)
        for local, stored in self.stored.items():
            text = text.replace(local, stored)
        return err if text == str(err) else type(err)(text)

    def report(self, step: int, checkpoint: Any = None, **extra: float) -> None:
        self.before_report()
        self.api.report({"step": step, **self.latest, **extra}, checkpoint=checkpoint)


def record_divergence(err: TrainingDiverged, reporter: RayReporter, tracker: MlflowLogger | None, metric: str,
                      mode: str) -> None:
    """A diverged sweep trial is a result (its lr is too high), not an error that should stop the sweep: the
    MLflow run ends FAILED with a `diverged` tag and Tune gets the worst value of the metric."""
    if tracker is not None:
        tracker.flush()
        tracker.client.set_tag(tracker.run_id, "diverged", str(err))
        tracker.client.set_terminated(tracker.run_id, "FAILED")
    reporter.report(0, **{metric: math.inf if mode == "min" else -math.inf, "diverged": 1.0})


class FailOnce(RunLogger):
    """cluster.fail_at_step: raise at the first logged step >= k, once per run (a marker file in the run's storage
    remembers)."""

    def __init__(self, step: int, marker: StoredFile) -> None:
        self.step, self.marker = step, marker

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if step >= self.step and not self.marker.exists():
            self.marker.write_text(str(step))
            raise InjectedFailure(f"injected failure at step {step} (cluster.fail_at_step={self.step})")


class ConsoleUpload(RunLogger):
    """Copies rank 0's console log (on its own node's disk) to the run's storage at each checkpoint; `now()` at the
    end. A worker on another host than the driver cannot write a file on the driver's disk."""

    def __init__(self, local: Path, console: TextIO, stored: StoredFile) -> None:
        self.local, self.console, self.stored = local, console, stored

    def checkpoint(self, step: int, path: str | None) -> None:
        self.now()

    def now(self) -> None:
        self.console.flush()
        self.stored.upload(self.local)


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


def in_scratch(cfg: Config, folder: Path) -> Config:
    """`cfg` writing its checkpoints to `folder`: a worker's scratch on its own disk. Ray persists and restores the
    checkpoints, so train.resume is off (nothing of an earlier attempt is in a new scratch folder)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(folder), resume=False))


def train_reported(cfg: Config, api: ModuleType, *, tracker: MlflowLogger | None = None,
                   sweep: dict[str, Any] | None = None, loggers: list[RunLogger] = (),
                   after: list[RunLogger] = (), notes: dict[str, str] | None = None, device: Any = None,
                   storage: str | None = None, cluster: ClusterConfig | None = None) -> None:
    """The body of every run that Ray runs (a Train worker, a one-worker sweep trial): train in a scratch folder,
    resuming from Ray's checkpoint when there is one, with `loggers`, a RayReporter through `api` (ray.train or
    ray.tune) and then `after`; a sweep trial (`sweep`: report_every, metric, mode) reports more often and records
    divergence as a result. With data.pipeline ray_data the train batches come from Ray Data tasks placed as
    `cluster` says (orchestration/ray_data_input.py); the device half stays here. The scratch folder is removed
    however the run ends (by the next worker on the node if this one is killed: orchestration/scratch.py)."""
    reporter = RayReporter(api, every=sweep["report_every"] if sweep else 0,
                           before_report=tracker.flush if tracker else lambda: None, notes=notes, storage=storage)
    with scratch_folder() as scratch:
        resume = fetch_checkpoint(stored := api.get_checkpoint(), scratch)
        reporter.remember(resume, stored)
        try:  # the run's own folder inside: train.out_dir has a lock of its own (mupvit.train)
            run(in_scratch(cfg, scratch / "run"), MultiLogger(*loggers, reporter, *after), device=device,
                resume_from=resume, batches=train_batches(cfg, cluster or ClusterConfig()),
                stop_requested=notice_received if api is ray.train else None)
            if tracker is not None and reporter.stored:
                tracker.tag_checkpoint(f"{next(reversed(reporter.stored.values()))}/{CHECKPOINT_FILE}")
        except TrainingDiverged as err:
            if not sweep:
                raise reporter.in_storage_terms(err) from None
            record_divergence(err, reporter, tracker, sweep["metric"], sweep["mode"])
        except NOT_RETRIED as err:  # ends the run (orchestration.failures): say where its checkpoint is kept
            raise reporter.in_storage_terms(err) from None
        except StopRequested as stop:  # the checkpoint of its step is reported: Ray Train restarts from it
            hand_over(stop.step, reporter.stored.get(str(stop.checkpoint), "in the run's storage"))


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: resume from Ray's latest checkpoint, else start, and train. Rank 0 also
    records the run in MLflow and writes the console log; a sweep trial's workers (loop_config["sweep"]) report
    more often and record divergence."""
    quiet_ray_console()
    try:
        train_worker(loop_config)
    except NOT_RETRIED:  # the run ends here (orchestration.failures), and the driver says why in one line
        RayInfoFilter.stopping = True
        raise


def train_worker(loop_config: dict[str, Any]) -> None:
    """train_loop's work, on rank 0 with the MLflow logger and the console log."""
    cfg = config_from_dict(loop_config["config"])
    common = {"sweep": loop_config.get("sweep"), "device": ray.train.torch.get_device(),
              "notes": {"mlflow_run_id": loop_config["run_id"]},  # the run a checkpoint belongs to
              "storage": loop_config["storage"], "cluster": ClusterConfig(**loop_config["launch"]["cluster"])}
    if ray.train.get_context().get_world_rank() != 0:
        train_reported(cfg, ray.train, **common)
        return
    storage = ray.train.get_context().get_storage()  # the run's folder or bucket prefix, as Ray Train opens it
    stored = StoredFile(storage.storage_filesystem, f"{storage.experiment_fs_path}/console.log")
    fail_at = loop_config.get("fail_at_step")
    marker = StoredFile(storage.storage_filesystem, f"{storage.experiment_fs_path}/injected_failure.done")
    after = [FailOnce(fail_at, marker)] if fail_at is not None else []
    with scratch_folder() as logs:  # the console log on this node's disk, continuing an earlier attempt's
        local = logs / "console.log"
        local.write_text(stored.read_text() if stored.exists() else "")
        tracker = MlflowLogger(loop_config["tracking_uri"], loop_config["run_id"], local,
                               launch=loop_config.get("launch"))
        with local.open("a") as console:
            upload = ConsoleUpload(local, console, stored)
            try:
                train_reported(cfg, ray.train, tracker=tracker,
                               loggers=[ConsoleLogger(Tee(sys.stderr, console)), tracker], after=[*after, upload],
                               **common)
            finally:  # a log that cannot be uploaded must not hide how the run ended
                try:
                    upload.now()
                except OSError as err:
                    print(f"mupvit: console log not uploaded to {stored.path}: {err}", file=sys.stderr)
