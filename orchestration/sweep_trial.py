"""One sweep trial: a normal mupvit run recorded as a child MLflow run, reporting to Tune often enough for ASHA.
A one-worker trial trains in the Tune function trial itself (no nested placement group); a trial of several
workers runs a Ray Train TorchTrainer from the function trial, whose reports reach Tune via TuneReportCallback."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.tune
from mlflow.tracking import MlflowClient

from mupvit.config import Config
from mupvit.logger import MultiLogger
from mupvit.train import TrainingDiverged, run
from orchestration.sweep_spec import SweepSpec, with_trial_settings
from orchestration.tracking import MlflowLogger, open_run
from orchestration.train import fit, prepare
from orchestration.worker import RayReporter, fetch_checkpoint, record_divergence

REPORT_EVERY = 5  # logged steps between reports to Tune (a report per step costs more than a small model's step)
DRIVER_MEMORY = 256 * 2**20  # a multi-worker trial's driver reserves memory, no CPU: its workers get them all


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What Tune reserves for one trial's function: the whole trial when it trains there, only the driver when
    a TorchTrainer's workers (with their own placement group) do the training."""
    if spec.trial_workers > 1:
        return {"cpu": 0, "memory": DRIVER_MEMORY}
    return {"cpu": spec.trial_cpus, **({"gpu": spec.trial_gpus} if spec.trial_gpus else {})}


def train_config(cfg: Config, spec: SweepSpec, storage: str) -> Config:
    """A multi-worker trial's cluster section: trial_cpus / trial_gpus shared by its workers, its own storage."""
    w = spec.trial_workers
    cluster = dataclasses.replace(
        cfg.cluster, num_workers=w, cpus_per_worker=spec.trial_cpus / w, use_gpu=spec.trial_gpus > 0,
        gpus_per_worker=spec.trial_gpus / w if spec.trial_gpus else cfg.cluster.gpus_per_worker,
        storage_path=f"{storage.rstrip('/')}/sweeps/{spec.name}/trials")
    return prepare(dataclasses.replace(cfg, cluster=cluster), Path(storage))


def train_here(cfg: Config, spec: SweepSpec, run_id: str, tracking_uri: str) -> None:
    local = Path(tempfile.mkdtemp(prefix="mupvit-trial-"))
    cfg = with_trial_settings(cfg, str(local))
    tracker = MlflowLogger(tracking_uri, run_id)
    reporter = RayReporter(ray.tune, every=REPORT_EVERY, before_report=tracker.flush)
    try:
        run(cfg, MultiLogger(tracker, reporter), resume_from=fetch_checkpoint(ray.tune.get_checkpoint(), local))
    except TrainingDiverged as err:
        record_divergence(err, reporter, tracker, spec.metric, spec.mode)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def sweep_trial(params: dict[str, Any], *, spec: SweepSpec, parent_run_id: str, tracking_uri: str, repo: str,
                storage: str) -> None:
    """Tune function trainable: `params` holds the sampled values of the sweep's space."""
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = spec.trial_config(params)
    if spec.trial_workers > 1:
        cfg = train_config(cfg, spec, storage)
    client = MlflowClient(tracking_uri)
    run_id, _ = open_run(client, cfg, f"{spec.name}/{trial_id}", Path(repo), parent_run_id=parent_run_id,
                         extra_tags={"sweep": spec.name, "trial_id": trial_id})
    if spec.trial_workers > 1:
        # The Train run's name is the trial's, so a restored sweep resumes the trial from its Train checkpoint.
        fit(cfg, f"{spec.name}-{trial_id}", run_id, tracking_uri,
            sweep={"report_every": REPORT_EVERY, "metric": spec.metric, "mode": spec.mode})
    else:
        train_here(cfg, spec, run_id, tracking_uri)
    if client.get_run(run_id).info.status == "RUNNING":  # a diverged trial has already ended FAILED
        client.set_terminated(run_id, "FINISHED")
