"""One sweep trial: a normal mupvit run recorded as a child MLflow run, reporting to Tune often enough for ASHA.
A one-worker trial trains in the Tune function trial itself (no nested placement group); a trial of several
workers runs a Ray Train TorchTrainer from the function trial, whose reports reach Tune via TuneReportCallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.tune
from mlflow.tracking import MlflowClient
from ray.train._internal.session import get_session

from orchestration.failures import FAILURE_TAG, describe_failure
from orchestration.sweep_spec import SweepSpec
from orchestration.tracking import MlflowLogger, open_run
from orchestration.train import fit
from orchestration.worker import train_reported

REPORT_EVERY = 5  # logged steps between reports to Tune (a report per step costs more than a small model's step)
DRIVER_MEMORY = 256 * 2**20  # a multi-worker trial's driver reserves memory, no CPU: its workers get them all


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What Tune reserves for one trial's function: the whole trial when it trains there, only the driver when
    a TorchTrainer's workers (with their own placement group) do the training."""
    if spec.trial_workers > 1:
        return {"cpu": 0, "memory": DRIVER_MEMORY}
    return {"cpu": spec.trial_cpus, **({"gpu": spec.trial_gpus} if spec.trial_gpus else {})}


def sweep_trial(params: dict[str, Any], *, spec: SweepSpec, parent_run_id: str, tracking_uri: str, repo: str,
                base_dir: str, storage: str) -> None:
    """Tune function trainable: `params` holds the sampled values of the sweep's space."""
    trial_id = ray.tune.get_context().get_trial_id()
    trial = spec.trial_launch(params, Path(base_dir), storage)
    client = MlflowClient(tracking_uri)
    run_id, before = open_run(client, trial, f"{spec.name}/{trial_id}", Path(repo), parent_run_id=parent_run_id,
                              extra_tags={"sweep": spec.name, "trial_id": trial_id})
    if before != "NEW" and FAILURE_TAG in client.get_run(run_id).data.tags:  # why an earlier attempt failed
        client.delete_tag(run_id, FAILURE_TAG)
    reporting = {"report_every": REPORT_EVERY, "metric": spec.metric, "mode": spec.mode}
    # Tune stops a trial (ASHA, Ctrl-C) by calling its `stop`, which sets this event, then ends the trial's actor
    # (Ray 2.60: Trainable.stop -> FunctionTrainable.cleanup -> _TrainSession.finish; no public API says it).
    stop_requested = get_session().stop_event
    try:
        if spec.trial_workers > 1:
            # The Train run's name is the trial's, so a restored sweep resumes the trial from its Train checkpoint.
            fit(trial, f"{spec.name}-{trial_id}", run_id, tracking_uri, sweep=reporting)
        else:
            tracker = MlflowLogger(tracking_uri, run_id, launch=trial.sections())
            train_reported(trial.run, ray.tune, tracker=tracker, loggers=[tracker], sweep=reporting)
    except Exception as err:  # not SystemExit: Tune stops a trial (ASHA, Ctrl-C) by one, and that is no failure
        if stop_requested.is_set():
            # Ending a stopped multi-worker trial's actor takes its Train controller with it, and `fit` may see
            # that death (ActorDiedError) before the stop reaches this thread: a stop, left to close_children.
            return
        client.set_tag(run_id, FAILURE_TAG, describe_failure(err))
        client.set_terminated(run_id, "FAILED")
        raise
    if client.get_run(run_id).info.status == "RUNNING":  # a diverged trial has already ended FAILED
        client.set_terminated(run_id, "FINISHED")
