"""MLflow tracking for orchestration runs: the store URI, reachability, one run per training run, and the
RunLogger that rank 0 uses to record params, tags, metrics and artifacts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mupvit.config import ConfigError, flatten
from mupvit.logger import RunLogger
from mupvit.outputs import check_output_file
from mupvit.results import PAPER_REAL_TAG, PAPER_TAG, PAPER_V2_TAG, paper_acc1, paper_real_v2
from orchestration.launch_config import Launch, TrackingConfig

RUN_KEY_TAG = "mupvit.run_key"  # the deterministic run name: one MLflow run per training run
# The run as it resolved, typed (JSON): {"config": the run's config, "launch": cluster and tracking sections (runs
# of orchestration.train), "derived": model shape, steps, epochs, devices, ... (mupvit.train.run_info)}.
RESOLVED_ARTIFACT = "resolved.json"
DEFAULT_URI = "sqlite:///mlflow.db"
# The run's final weights (timm layout, model config in the file's metadata) and its config beside them: what
# `python -m mupvit.evaluate CONFIG --checkpoint runs:/<run_id>/weights/model.safetensors` loads.
WEIGHTS_FOLDER = "weights"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_TAG = "mupvit.checkpoint_uri"  # where Ray stored the run's newest checkpoint (a path or bucket URL)

# MLflow's INFO lines ("Creating initial MLflow database tables...") are not the run's progress: warnings only on
# the console, unless the user asks for more with MLflow's own MLFLOW_LOGGING_LEVEL.
if "MLFLOW_LOGGING_LEVEL" not in os.environ:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
# Nor are its download progress bars (one per artifact the report reads): off unless the user turns them on.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message says which URI and why."""


def resolve_uri(given: str | None, base_dir: Path, source: str = "tracking.uri") -> str:
    """The store to use: `given`, else $MLFLOW_TRACKING_URI, else a SQLite file in `base_dir`. Relative SQLite paths
    are made absolute against `base_dir` (Ray workers run in their own temp directories, and MLflow would resolve
    them against whatever directory it runs in). A bare path is refused, naming `source` (the key or flag)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base_dir / uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:  # a bare path: MLflow's file store, which 3.x refuses by default
        raise ConfigError(f"{source}: {uri!r} is a file path; use sqlite:///path/mlflow.db or http://host:port")
    return uri


def tracking_uri(tracking: TrackingConfig, base_dir: Path) -> str:
    """The store of a run: tracking.uri resolved by `resolve_uri`."""
    return resolve_uri(tracking.uri, base_dir)


def check_store_shared(uri: str, nodes: int) -> None:
    """Workers on other nodes cannot write a SQLite file that lives on the driver's machine."""
    if nodes > 1 and uri.startswith(("sqlite:", "file:")):
        raise ConfigError(f"tracking.uri: {uri} is a file on this machine, but the cluster has {nodes} nodes and "
                          "workers elsewhere cannot write it; run `mlflow server` on the head node and set "
                          "tracking.uri (or MLFLOW_TRACKING_URI) to http://<head>:5000")


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to the database file (MLflow's default, ./mlruns, would be relative to
    whichever directory the first run started in: a job's temporary working dir). A server decides itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when the store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({type(err).__name__}); start it "
                "(`python -m dashboards.ui` or `mlflow server --host 127.0.0.1`) or fix tracking.uri / "
                "MLFLOW_TRACKING_URI"
            ) from err
        check_login(uri, timeout_s)
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow SQLite store {uri}: folder {folder} does not exist or is not writable; "
                                "create it or set tracking.uri (or MLFLOW_TRACKING_URI) to a writable folder")


def check_login(uri: str, timeout_s: float) -> None:
    """A server with authentication (`mlflow server --app-name basic-auth`) must accept this process's login
    (MLFLOW_TRACKING_USERNAME / _PASSWORD, or _TOKEN): asked once here, since /health answers anyone."""
    env = os.environ
    auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", "")) \
        if env.get("MLFLOW_TRACKING_USERNAME") else None
    headers = {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"} if env.get("MLFLOW_TRACKING_TOKEN") else {}
    try:
        response = requests.post(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", json={"max_results": 1},
                                 auth=auth, headers=headers, timeout=timeout_s)
    except requests.RequestException as err:
        raise TrackingError(f"MLflow tracking server {uri} does not answer ({type(err).__name__})") from err
    if response.status_code in (401, 403):
        given = "no login" if auth is None and not headers else f"the login of {auth[0] if auth else 'the token'}"
        raise TrackingError(f"MLflow tracking server {uri} refuses {given} (HTTP {response.status_code}); set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server")


def check_writable_store(uri: str) -> None:
    """A store that a run will write: reachable (check_reachable) and, for SQLite, the database file writable, and
    its folder, where SQLite writes its journal (a read-only disk or file fails here, in seconds, not after the
    cluster connect with MLflow's traceback)."""
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        check_output_file(Path(uri.removeprefix("sqlite:///")), f"tracking.uri (or MLFLOW_TRACKING_URI) {uri}")


def git_state(repo: Path) -> tuple[str, bool | None]:
    """(commit, dirty) of `repo`; under `ray job submit` the working dir has no .git, so $MUPVIT_GIT_COMMIT
    (set by the submit command) stands in."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("MUPVIT_GIT_COMMIT", "unknown"), None


def run_tags(launch: Launch, run_key: str, repo: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    commit, dirty = git_state(repo)
    cfg, c = launch.run, launch.cluster
    tags = {
        RUN_KEY_TAG: run_key, "git_commit": commit, "git_dirty": str(dirty).lower(),
        "dataset": cfg.data.dataset, "variant": str(cfg.model.variant), "parametrization": cfg.model.parametrization,
        "head": cfg.model.head, "num_workers": str(c.num_workers), "devices": str(cfg.train.devices),
        "use_gpu": str(c.use_gpu).lower(), **(extra or {}),
    }
    if launch.tracking.ablation:
        tags["ablation"] = launch.tracking.ablation
    for tag, reference in zip((PAPER_TAG, PAPER_REAL_TAG, PAPER_V2_TAG), (paper_acc1(cfg), *paper_real_v2(cfg)),
                              strict=True):
        if reference is not None:
            tags[tag] = str(reference)
    return tags


def find_run(client: MlflowClient, experiment_id: str, run_key: str) -> Any | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=2)
    return runs[0] if runs else None


def finished_run_id(uri: str, experiment: str, run_key: str) -> str | None:
    """The id of the MLflow run of `run_key` in `experiment` when it is FINISHED; else None (none yet, or not done)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    run = find_run(client, found.experiment_id, run_key) if found else None
    return run.info.run_id if run is not None and run.info.status == "FINISHED" else None


def open_run(client: MlflowClient, launch: Launch, run_key: str, repo: Path,
             parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> tuple[str, str]:
    """The MLflow run of `run_key`: found by its tag (a resubmission) or created with params and tags. The params
    are the experiment's dotted keys as text (for the UI's search); the typed record is RESOLVED_ARTIFACT.
    Returns (run_id, status before this call: "NEW", "FINISHED", "FAILED", ...)."""
    experiment = client.get_experiment_by_name(launch.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        launch.tracking.experiment, artifact_location=artifact_location(client.tracking_uri))
    existing = find_run(client, experiment_id, run_key)
    if existing is not None:
        if existing.info.status != "FINISHED":
            client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, existing.info.status
    tags = run_tags(launch, run_key, repo, extra_tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_key, tags=tags)
    params = [Param(k, str(v)[:6000]) for k, v in flatten(launch.to_dict()).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id, "NEW"


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The `final/...` metrics of a finished mupvit.train summary: its wall time, images/s and every evaluator's
    last numbers (`final/<evaluator>/<metric>`), as a run logs them at its end."""
    finals = {"final/wall_s": summary["wall_s"], "final/images_per_s": summary["images_per_s"]}
    for split, values in summary.get("eval", {}).items():
        finals.update({f"final/{split}/{k}": v for k, v in values.items()})
    return finals


class MlflowLogger(RunLogger):
    """Rank 0's logger: every metric keyed by optimiser step, results and final numbers, config and console log
    as artifacts. Talks to the run by id (no global active run), so it works in any Ray worker process."""

    def __init__(self, uri: str, run_id: str, console_log: Path | None = None, flush_every_s: float = 10.0,
                 launch: dict[str, Any] | None = None) -> None:
        self.client, self.run_id, self.console_log, self.launch = MlflowClient(uri), run_id, console_log, launch
        # Metrics are sent in batches (a SQLite write per logged step would cost more than a small model's step);
        # every checkpoint flushes, and a resumed run re-logs whatever it lost after its checkpoint.
        self.flush_every_s, self.pending, self.last_flush = flush_every_s, [], time.monotonic()

    def start(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        import yaml

        tags = [RunTag("total_steps", str(info["total_steps"])), RunTag("train_images", str(info["train_images"]))]
        self.client.log_batch(self.run_id, tags=tags)
        self.config_text = yaml.safe_dump(config, sort_keys=False)
        self.client.log_text(self.run_id, self.config_text, "config.yaml")
        resolved = {"config": config, "launch": self.launch, "derived": info}
        self.client.log_text(self.run_id, json.dumps(resolved, indent=1), RESOLVED_ARTIFACT)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in values.items() if value is not None]
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending, self.last_flush = [], time.monotonic()

    def checkpoint(self, step: int, path: str | None) -> None:
        self.flush()

    def end(self, summary: dict[str, Any]) -> None:
        self.metrics(summary["steps"], final_metrics(summary))
        self.flush()
        if summary.get("checkpoint"):
            self.log_weights(Path(summary["checkpoint"]))
        if self.console_log is not None and self.console_log.exists():
            self.client.log_artifact(self.run_id, str(self.console_log))

    def log_weights(self, checkpoint: Path) -> None:
        """The weights of `checkpoint` (the run's last) as WEIGHTS_FOLDER/WEIGHTS_FILE (timm layout), or model.npz
        (big_vision's) for a model timm cannot hold (an MLP head), with the run's config. None for a model neither
        holds (µP away from its base width): a warning, and the checkpoint tag still names the run's checkpoint.
        Through the client, so a server with proxied artifacts stores them: the worker needs no bucket access."""
        from mupvit.export import export  # torch: loaded by the worker that has it, not by every driver
        from mupvit.models.adapters.base import AdapterError

        with tempfile.TemporaryDirectory() as folder:
            refusals = []
            for layout, name in (("timm", WEIGHTS_FILE), ("big_vision", "model.npz")):
                try:
                    export(checkpoint, layout, Path(folder) / name)
                    break
                except AdapterError as err:
                    refusals.append(f"{layout}: {err}")
            else:
                print(f"warning: no weights artifact ({'; '.join(refusals)}); the run's checkpoint is "
                      f"{checkpoint}", file=sys.stderr, flush=True)
                return
            if getattr(self, "config_text", None):
                (Path(folder) / "config.yaml").write_text(self.config_text)
            self.client.log_artifacts(self.run_id, folder, WEIGHTS_FOLDER)

    def tag_checkpoint(self, uri: str) -> None:
        self.client.set_tag(self.run_id, CHECKPOINT_TAG, uri)


def read_resolved(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """A run's RESOLVED_ARTIFACT; None for a run that has none (it never started training, or predates it)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            return json.loads(Path(client.download_artifacts(run_id, RESOLVED_ARTIFACT, folder)).read_text())
        except (OSError, ValueError, MlflowException):
            return None
