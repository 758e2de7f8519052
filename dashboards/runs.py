"""The runs of an MLflow store as one tidy pandas DataFrame (one row per run; `params.*`, `tags.*`, `metrics.*`
columns as `mlflow.search_runs` names them, and `resolved`: the run's typed record of what its config resolved
to), their metric histories, and small readers for the values the report needs (width, headline evaluator,
N-epoch-equivalent results)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mupvit.config import Config, ConfigError, build_config
from mupvit.results import result_epochs
from orchestration.tracking import TrackingError, check_reachable, read_resolved, resolve_uri


class ReportError(Exception):
    """The report cannot be built from what was asked for; the message says what is wrong and how to fix it."""


def store_uri(given: str | None) -> str:
    """--tracking-uri resolved as every command resolves a store (orchestration.tracking.resolve_uri)."""
    try:
        return resolve_uri(given, Path.cwd(), source="--tracking-uri")
    except ConfigError as err:
        raise ReportError(str(err)) from err


def open_store(uri: str) -> MlflowClient:
    """A client for an existing store; never creates an empty SQLite database where none was."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path} ({uri}); run an experiment first, or pass "
                              "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store that holds the runs")
    elif "://" not in uri:
        raise ReportError(f"tracking URI {uri!r} is a bare path; use sqlite:////abs/path/mlflow.db or http://host:port")
    try:
        check_reachable(uri)
    except TrackingError as err:
        raise ReportError(str(err)) from err
    return MlflowClient(uri)


def _record(run: Run, experiment_names: dict[str, str]) -> dict[str, Any]:
    info, data = run.info, run.data
    record: dict[str, Any] = {
        "run_id": info.run_id, "experiment": experiment_names.get(info.experiment_id, info.experiment_id),
        "run_name": info.run_name, "status": info.status, "start_time": pd.Timestamp(info.start_time, unit="ms"),
        "parent_run_id": data.tags.get("mlflow.parentRunId"),
    }
    record.update({f"params.{k}": v for k, v in data.params.items()})
    record.update({f"tags.{k}": v for k, v in data.tags.items()})
    record.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    return record


def _role(row: pd.Series, parents: set[str]) -> str:
    """sweep_parent, sweep_trial or training: only training runs belong in the reproduction tables."""
    if row.get("tags.sweep_role") == "parent":
        return "sweep_parent"
    if row.get("parent_run_id") in parents or isinstance(row.get("tags.sweep"), str):
        return "sweep_trial"
    return "training"


def _search(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=1000, page_token=token, order_by=["start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            return runs


def fetch_runs(client: MlflowClient, experiments: list[str] | None = None,
               run_ids: list[str] | None = None) -> pd.DataFrame:
    """Runs of the named experiments (default: all); with `run_ids`, only those runs and the trials of any sweep
    parent among them. Adds columns run_id, experiment, run_name, status, start_time, parent_run_id, role, resolved."""
    known = {e.name: e.experiment_id for e in client.search_experiments()}
    if experiments:
        unknown = [name for name in experiments if name not in known]
        if unknown:
            raise ReportError(f"unknown experiment(s) {', '.join(map(repr, unknown))} in {client.tracking_uri}; "
                              f"known: {', '.join(sorted(known)) or 'none'}")
    chosen = {name: known[name] for name in (experiments or known)}
    runs = _search(client, list(chosen.values())) if chosen else []
    frame = pd.DataFrame([_record(r, {v: k for k, v in chosen.items()}) for r in runs])
    if frame.empty:
        raise ReportError(f"no runs in experiment(s) {', '.join(sorted(chosen)) or '(none)'} of {client.tracking_uri}")
    parents = set(frame.loc[frame["tags.sweep_role"] == "parent", "run_id"]) if "tags.sweep_role" in frame else set()
    frame["role"] = [_role(row, parents) for _, row in frame.iterrows()]
    if run_ids:
        missing = [r for r in run_ids if r not in set(frame["run_id"])]
        if missing:
            raise ReportError(f"run(s) {', '.join(missing)} not found in experiment(s) "
                              f"{', '.join(sorted(chosen))} of {client.tracking_uri}")
        wanted = set(run_ids)
        frame = frame[frame["run_id"].isin(wanted) | frame["parent_run_id"].isin(wanted & parents)]
    frame = frame.reset_index(drop=True)
    frame["resolved"] = [read_resolved(client, run_id) for run_id in frame["run_id"]]
    return frame


class Histories:
    """Metric histories by (run, key), fetched once: a DataFrame of step and value sorted by step. A resumed run
    re-logs the steps after its checkpoint, so the latest value logged at a step wins."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.cache: dict[tuple[str, str], pd.DataFrame] = {}

    def get(self, run_id: str, key: str) -> pd.DataFrame:
        if (run_id, key) not in self.cache:
            try:
                points = self.client.get_metric_history(run_id, key)
            except MlflowException:
                points = []
            frame = pd.DataFrame([(m.step, m.timestamp, m.value) for m in points],
                                 columns=["step", "timestamp", "value"])
            frame = frame.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last")
            self.cache[run_id, key] = frame[["step", "value"]].reset_index(drop=True)
        return self.cache[run_id, key]


def number(value: Any) -> float | None:
    """A param/tag/metric as a float; None for missing, "None" and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def text(value: Any) -> str:
    """A param/tag as display text; "" for missing and "None"."""
    return "" if value is None or value == "None" or (isinstance(value, float) and math.isnan(value)) else str(value)


def resolved_config(row: pd.Series) -> Config | None:
    """The run's config as it resolved (RESOLVED_ARTIFACT, typed); None for a run without the record."""
    record = row.get("resolved")
    return build_config(record["config"]) if isinstance(record, dict) else None


def derived(row: pd.Series, key: str) -> Any:
    """A value the run's config resolved to (width, total_steps, epochs, devices, ...); None without the record."""
    record = row.get("resolved")
    return record["derived"].get(key) if isinstance(record, dict) else None


def model_width(row: pd.Series) -> int | None:
    """The model's width as the run resolved it (a variant's, or an explicit one)."""
    return derived(row, "width")


def eval_split(row: pd.Series) -> str | None:
    """The run's headline evaluator (the one behind acc1_at_<N>ep), or None when it evaluated nothing."""
    cfg = resolved_config(row)
    return cfg.headline() if cfg is not None else None


def epoch_results(row: pd.Series) -> dict[float, str]:
    """N -> metric key of every acc1_at_<N>ep the run logged, in epoch order."""
    found = {}
    for column, value in row.items():
        key = str(column).removeprefix("metrics.")
        epochs = result_epochs(key)
        if str(column).startswith("metrics.") and epochs is not None and number(value) is not None:
            found[epochs] = key
    return dict(sorted(found.items()))
