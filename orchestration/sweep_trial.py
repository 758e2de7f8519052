"""One sweep trial: a normal mupvit run in the Tune function trial (one worker, no nested placement group),
reporting to Tune at every log step and eval (so ASHA can stop it) and recorded as a child MLflow run."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import ray.tune
from mlflow.tracking import MlflowClient

from mupvit.logger import MultiLogger, RunLogger
from mupvit.train import TrainingDiverged, run
from orchestration.sweep_spec import with_trial_settings
from orchestration.tracking import MlflowLogger, open_run
from orchestration.worker import checkpoint_folder, fetch_checkpoint

LOSS_WINDOW = 20  # train/loss_avg: mean of the last logged train losses (a steadier metric than one batch)


class TuneReporter(RunLogger):
    """Reports to Tune every `every` logged steps and at each eval, with the latest eval numbers and a running-mean
    train loss; checkpoints travel with the report, so a restored trial resumes from its last one. MLflow is
    flushed before each report: ASHA may stop the trial at any report, and what was not sent would be lost."""

    def __init__(self, tracker: MlflowLogger, every: int = 5) -> None:
        self.tracker, self.every, self.logged = tracker, every, 0
        self.latest: dict[str, Any] = {}
        self.losses: deque[float] = deque(maxlen=LOSS_WINDOW)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if "train/loss" in values:
            self.losses.append(values["train/loss"])
            self.latest["train/loss_avg"] = sum(self.losses) / len(self.losses)
            self.logged += 1
        self.latest.update(values)
        if self.logged % self.every == 0 or any(not k.startswith("train/") for k in values):
            self.tracker.flush()
            ray.tune.report({"step": step, **self.latest})

    def checkpoint(self, step: int, path: str | None) -> None:
        if path is None:
            return
        self.tracker.flush()
        with checkpoint_folder(path) as folder:
            ray.tune.report({"step": step, **self.latest}, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def sweep_trial(params: dict[str, Any], *, spec, parent_run_id: str, tracking_uri: str, repo: str) -> None:
    """Tune function trainable: `params` holds the sampled values of the sweep's space."""
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = spec.trial_config(params)
    local = Path(tempfile.mkdtemp(prefix="mupvit-trial-"))
    cfg = with_trial_settings(cfg, str(local))
    client = MlflowClient(tracking_uri)
    run_id, _ = open_run(client, cfg, f"{spec.name}/{trial_id}", Path(repo), parent_run_id=parent_run_id,
                         extra_tags={"sweep": spec.name, "trial_id": trial_id})
    resume_from = fetch_checkpoint(ray.tune.get_checkpoint(), local)
    tracker = MlflowLogger(tracking_uri, run_id)
    reporter = TuneReporter(tracker)
    try:
        run(cfg, MultiLogger(tracker, reporter), resume_from=resume_from)
    except TrainingDiverged as err:
        # A diverged trial is a result (this lr is too high), not an error that should stop the sweep.
        tracker.flush()
        client.set_tag(run_id, "diverged", str(err))
        client.set_terminated(run_id, "FAILED")
        worst = math.inf if spec.mode == "min" else -math.inf
        ray.tune.report({"step": 0, **reporter.latest, spec.metric: worst, "diverged": 1.0})
        return
    finally:
        shutil.rmtree(local, ignore_errors=True)
    client.set_terminated(run_id, "FINISHED")
