"""µP transfer sweeps: one row per trial (the searched parametrization, width and lr, the trial's final metric,
whether it diverged or was stopped early), in the trial table of orchestration.sweep_results."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dashboards.runs import Histories, model_width, number, text
from mupvit.results import LOSS_WINDOW
from orchestration.sweep_results import TRIAL_COLUMNS

DEFAULT_METRIC, DEFAULT_MODE = "train/loss_avg", "min"


def sweep_metric(client: MlflowClient, parent_run_id: str) -> tuple[str, str]:
    """(metric, mode) of the sweep file the parent run logged as an artifact; the sweep default without one."""
    try:
        files = [a.path for a in client.list_artifacts(parent_run_id) if a.path.endswith((".yaml", ".yml"))]
        with tempfile.TemporaryDirectory() as folder:
            for name in files:
                spec = yaml.safe_load(Path(client.download_artifacts(parent_run_id, name, folder)).read_text())
                if isinstance(spec, dict) and "space" in spec:
                    return str(spec.get("metric", DEFAULT_METRIC)), str(spec.get("mode", DEFAULT_MODE))
    except (MlflowException, OSError, yaml.YAMLError):
        pass
    return DEFAULT_METRIC, DEFAULT_MODE


def trial_value(run: pd.Series, metric: str, histories: Histories) -> float | None:
    """The trial's final metric: train/loss_avg recomputed from the logged train/loss (Tune's copy is not in
    MLflow), any other metric as last logged. None when missing or not finite."""
    if metric == DEFAULT_METRIC:
        losses = histories.get(run["run_id"], "train/loss")["value"].tail(LOSS_WINDOW)
        value = float(losses.mean()) if len(losses) else None
    else:
        value = number(run.get(f"metrics.{metric}"))
    return value if value is not None and math.isfinite(value) else None


def sp_first(column: pd.Series) -> pd.Series:
    """Sort key: SP before µP (the reference first), other columns as they are."""
    return column.map({"sp": 0, "mup": 1}).fillna(2) if column.name == "parametrization" else column


def sweep_trials(runs: pd.DataFrame, client: MlflowClient, histories: Histories) -> pd.DataFrame:
    """One row per sweep trial in `runs`: sweep, parent_run_id, run_id, trial_id, parametrization, width, lr,
    log2_lr, metric, mode, value, diverged, early_stopped, status."""
    trials = runs[runs["role"] == "sweep_trial"]
    metrics = {parent: sweep_metric(client, parent) for parent in trials["parent_run_id"].dropna().unique()}
    rows = []
    for _, run in trials.iterrows():
        metric, mode = metrics.get(run["parent_run_id"], (DEFAULT_METRIC, DEFAULT_MODE))
        value = trial_value(run, metric, histories)
        lr = number(run.get("params.optim.lr"))
        rows.append({
            "sweep": text(run.get("tags.sweep")), "parent_run_id": run["parent_run_id"], "run_id": run["run_id"],
            "trial_id": text(run.get("tags.trial_id")),
            "parametrization": text(run.get("params.model.parametrization")), "width": model_width(run),
            "lr": lr, "log2_lr": round(math.log2(lr), 3) if lr else None, "metric": metric, "mode": mode,
            "value": value, "diverged": bool(text(run.get("tags.diverged"))),
            "early_stopped": text(run.get("tags.early_stopped")) == "true", "status": run["status"],
        })
    columns = [*TRIAL_COLUMNS, "parent_run_id", "run_id", "status"]
    return pd.DataFrame(rows, columns=columns).sort_values(["sweep", "parametrization", "width", "lr"],
                                                           key=sp_first, ignore_index=True)
