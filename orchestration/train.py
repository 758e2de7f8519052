"""Run one reproduction on Ray Train, recorded in MLflow.

    python -m orchestration.train experiments/demo_digits.yaml [--set key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m orchestration.train CONFIG

Order of work, so that a bad request costs seconds and leaves nothing behind: config -> tracking store reachable
-> the run's lock (a second driver of the run is refused at once; a bucket run's lock is in Ray, connected first)
-> Ray cluster can hold the workers -> a bucket storage_path writable and the dataset readable on a worker -> MLflow
run (found again on resubmission) -> TorchTrainer.fit(). Every wait for busy
resources is bounded by cluster.resource_wait_s. The run name is deterministic (config file stem + the run's
fingerprint, which changes only with settings that change the optimisation; or tracking.run_name), so running the
same command after a crash, or after changing a resumable setting such as data.root or train.log_every, resumes
from the latest checkpoint in cluster.storage_path.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from mupvit.config import Config, ConfigError, add_set_argument, check_budget, run_fingerprint
from mupvit.data import DataError, build_splits, eval_sets
from mupvit.errors import OutputError
from mupvit.models.build import build_model
from mupvit.models.weights import load_weights
from mupvit.outputs import FolderLock, check_output_file, check_writable
from mupvit.results import add_summary_argument, emit_summary
from mupvit.train import TrainingDiverged
from orchestration.autoscaling import can_add_nodes, scaled_for
from orchestration.cluster import (
    ClusterError,
    check_capacity,
    connect,
    describe,
    node_count,
    wait_for_free_resources,
    worker_resources,
)
from orchestration.failures import FAILURE_TAG, StopOnInputErrors, describe_failure, not_retried
from orchestration.launch_config import ClusterConfig, Launch, load_launch
from orchestration.preemption import SigtermIsPreemption
from orchestration.ray_data_input import check_input_capacity
from orchestration.rendezvous import ClosedRendezvousConfig
from orchestration.run_storage import (
    ClusterLock,
    check_storage_writable,
    is_bucket,
    ray_storage,
    stored_uri,
)
from orchestration.runtime_env import add_runtime_env_argument, parse_runtime_env
from orchestration.signals import interrupt_on_sigterm
from orchestration.tracking import (
    TrackingError,
    check_store_shared,
    check_writable_store,
    finished_run_id,
    open_run,
    tracking_uri,
)
from orchestration.worker import train_loop

REPO = Path(__file__).resolve().parent.parent
# Bad input (exit code 2): config, data, cluster capacity, tracking store, mostly raised before any run is created;
# an output that cannot be written; and the same met by a worker (orchestration.failures: not retried).
INPUT_ERRORS = (ConfigError, DataError, ClusterError, TrackingError, OutputError)
REPORT_POLL_INTERVAL_S = "0.1"  # seconds between the Ray Train controller's polls of its workers
# How long the data probe may take to start once its resources were seen free: a Ray worker process starts in
# seconds, more on a loaded node.
PROBE_START_S = 30.0


def log(text: str) -> None:
    print(f"orchestration: {text}", file=sys.stderr, flush=True)


def run_name(launch: Launch) -> str:
    """tracking.run_name, else <config stem>-<fingerprint of every setting that changes the optimisation>."""
    return launch.tracking.run_name or f"{Path(launch.source).stem}-{run_fingerprint(launch.run)}"


@ray.remote(num_returns="streaming")
def _probe_data(config: dict[str, Any], storage_path: str) -> Iterator[int | None]:
    """Runs where a worker would: a bucket storage_path must be writable there, and the train split, every
    evaluator's data and train.init_from readable. Yields None as soon as it runs (it holds its resources: what
    follows is reading, not waiting), then the train split's size."""
    from mupvit.config import config_from_dict

    yield None
    check_storage_writable(storage_path)
    cfg = config_from_dict(config)
    splits = build_splits(cfg)
    eval_sets(cfg, splits)
    check_init_from(cfg)
    yield len(splits[cfg.data.train_split])


def check_init_from(cfg: Config) -> None:
    """train.init_from loads into the run's model, by the loader the run itself uses (mupvit.models.weights): a
    missing, unreadable or foreign file fails here, before the MLflow run exists, not in each worker's setup."""
    if not cfg.train.init_from:
        return
    try:
        load_weights(build_model(cfg), cfg, cfg.train.init_from, keep_head=not cfg.train.init_head)
    except ConfigError as err:
        raise ConfigError(f"train.init_from: {err}") from None


def check_data_on_worker(launch: Launch) -> int:
    """The train split's size, read on a worker node (one with cluster.worker_labels) by a probe holding one worker's
    resources; those are waited for at most cluster.resource_wait_s (then a ClusterError), the reading itself is not
    bounded."""
    c = launch.cluster
    need = worker_resources(c)
    left = wait_for_free_resources(c, log, need, "on a worker node to probe the data")
    # The bucket's variables reach the probe in the job's runtime env (cluster.job_runtime_env).
    probe = _probe_data.options(num_cpus=c.cpus_per_worker, label_selector=c.worker_labels or {},
                                **({"num_gpus": c.gpus_per_worker} if c.use_gpu else {}))
    probe = probe.remote(launch.run.to_dict(), c.storage_path)
    start_s = max(left, PROBE_START_S)
    if not ray.wait([probe], timeout=start_s)[0]:  # the free resources were taken meanwhile, or no worker starts
        ray.cancel(probe, force=True)
        raise ClusterError(f"the data probe did not start on a worker node within {start_s:g} s although "
                           f"{describe(need)} looked free (another job took it, or no Ray worker starts there); "
                           "run the same command again, or raise cluster.resource_wait_s")
    try:
        ray.get(next(probe))
        return ray.get(next(probe))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, OutputError):  # the bucket storage_path: its own message names it
            raise OutputError(str(err.cause)) from None
        cause = err.cause if isinstance(err.cause, (DataError, ConfigError)) else describe_failure(err.cause)
        raise DataError(f"on a worker node: {cause}") from None


def run_lock(c: ClusterConfig, name: str, what: str = "") -> AbstractContextManager[Any]:
    """One driver per run, across jobs: the lock of the run's folder `name` in a local cluster.storage_path; for a
    bucket, a named actor in the Ray cluster (connected first), which every driver of the cluster sees and which
    dies with its driver. `what` names it in the refusal (default: run NAME); a sweep locks its own folder."""
    what = what or f"run {name}"
    if is_bucket(c.storage_path):
        return ClusterLock(f"{c.storage_path.rstrip('/')}/{name}", what)
    return FolderLock(Path(c.storage_path) / name, what)


def run_experiment(launch: Launch, base_dir: Path, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything after the config was read: checks, MLflow run, Ray Train fit, every Ray process of it in
    `runtime_env` (--runtime-env-json) besides the run's own variables. Returns the summary."""
    c = launch.cluster
    bucket = is_bucket(c.storage_path)
    if not bucket:  # a bucket is checked on a worker node, by the data probe
        check_writable(Path(c.storage_path), "cluster.storage_path")
    uri = tracking_uri(launch.tracking, base_dir)
    check_writable_store(uri)
    name = run_name(launch)
    # The run's lock before anything that waits (Ray, the data probe, the workers' resources): a second driver of
    # the run is refused at once, naming the first, instead of waiting for it and then finding its run finished.
    # A bucket run's lock lives in the Ray cluster: connected first.
    if bucket:
        log(f"connecting: {connect(c, runtime_env)}")
    with run_lock(c, name):
        if (finished := finished_run_id(uri, launch.tracking.experiment, name)) is not None:  # before any cluster
            # work: a finished run is done whatever the cluster or its data look like now
            log(f"run {name} already finished (MLflow run {finished}); nothing to do")
            return {"run_name": name, "mlflow_run_id": finished, "already_finished": True, "tracking_uri": uri}
        if not bucket:
            log(f"connecting: {connect(c, runtime_env)}")
        interrupt_on_sigterm()  # after ray.init, whose own handler exits at once (SystemExit mid-fit: the run left
        # FAILED, and a crash dump of Ray's threads)
        with scaled_for(lambda: check_capacity(c), [worker_resources(c)] * c.min_workers, c.worker_labels,
                        c.scale_up_wait_s, log):  # an autoscaler's nodes for the workers, asked for and waited for
            check_input_capacity(launch.run, c)
            check_store_shared(uri, node_count())
            check_budget(launch.run, check_data_on_worker(launch))
            return record(launch, name, uri)


def record(launch: Launch, name: str, uri: str) -> dict[str, Any]:
    """The MLflow run of `name` (found again on resubmission) around TorchTrainer.fit(); returns the summary."""
    client = MlflowClient(uri)
    run_id, before = open_run(client, launch, name, REPO)  # not FINISHED: run_experiment checked, under the lock
    log(f"run {name}: MLflow run {run_id} ({'new' if before == 'NEW' else 'resumed, was ' + before}) in {uri}")
    if before != "NEW" and FAILURE_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, FAILURE_TAG)  # why an earlier attempt failed no longer holds for this one
    try:
        wait_for_free_resources(launch.cluster, log)
        result = fit(launch, name, run_id, uri)
    except (KeyboardInterrupt, SystemExit) as stop:  # stopped by the user, not failed: SIGTERM (our handler) or
        # Ctrl-C, which Ray Train's own SIGINT handler turns into an abort of its workers and then a SystemExit
        client.set_terminated(run_id, "KILLED")
        raise KeyboardInterrupt from stop
    except BaseException as err:
        client.set_tag(run_id, FAILURE_TAG, describe_failure(err))
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    recorded = client.get_run(run_id).data.metrics  # the latest value of every metric, as MLflow shows it
    checkpoint = stored_uri(launch.cluster.storage_path, result.checkpoint.path) if result.checkpoint else None
    return {**recorded, "checkpoint": checkpoint, "run_name": name,
            "mlflow_run_id": run_id, "tracking_uri": uri}


def set_ray_train_timings(c: ClusterConfig) -> None:
    """Ray Train's timings that only environment variables set (its controller reads them from the driver's)."""
    # Ray Train waits this long for a worker group's resources before its controller counts a failure (its default:
    # 60 s), so a lost node that nobody replaces fails the run after 1 + cluster.max_failures waits, not never.
    # With an autoscaler, a restart may wait for a new node, as the run's start did (cluster.scale_up_wait_s).
    start_s = max(c.resource_wait_s, c.scale_up_wait_s) if can_add_nodes() else c.resource_wait_s
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{start_s:g}"
    # Each ray.train.report waits until the controller has collected the one before (a queue of one, polled every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): at Ray's default every eval and checkpoint after the
    # first stalls the workers up to 2 s. A poll is one small RPC a worker; the user's own setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_INTERVAL_S)


def fit(launch: Launch, name: str, run_id: str, uri: str, sweep: dict[str, Any] | None = None) -> Any:
    """TorchTrainer.fit() of the run `name`. Inside a sweep trial (`sweep`: report_every, metric, mode) its
    workers' reports also reach Tune, so ASHA sees them."""
    c = launch.cluster
    # Nothing on the driver's disk: rank 0 writes the console log on its own node and uploads it to the storage.
    loop_config = {"config": launch.run.to_dict(), "launch": launch.sections(), "run_id": run_id,
                   "tracking_uri": uri, "fail_at_step": c.fail_at_step,
                   "storage": f"{c.storage_path.rstrip('/')}/{name}"}
    callbacks = [StopOnInputErrors(), SigtermIsPreemption()]
    if sweep is not None:
        from ray.tune.integration.ray_train import TuneReportCallback

        loop_config["sweep"] = sweep
        callbacks.append(TuneReportCallback())
    set_ray_train_timings(c)
    storage_path, filesystem = ray_storage(c.storage_path)
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_config,
        # Its rendezvous store on loopback (one node) or the rank-0 node's address, not on every interface.
        torch_config=ClosedRendezvousConfig(backend="nccl" if c.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=c.ray_num_workers, use_gpu=c.use_gpu,
                                     resources_per_worker=worker_resources(c), label_selector=c.worker_labels,
                                     elastic_resize_monitor_interval_s=c.resize_check_s),
        # The bucket's and MLflow's variables reach the controller and workers in the job's runtime env.
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem, callbacks=callbacks,
                             # A worker group that cannot start (its node lost, no other) fails the controller:
                             # as many such tries as worker failures, then the run fails instead of retrying forever.
                             failure_config=FailureConfig(max_failures=c.max_failures,
                                                          controller_failure_limit=c.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=c.keep_checkpoints),
                             # Ray Train's INFO and WARNING lines go to the session's ray-train-sys-*.log files
                             # only; the console keeps the run's own progress and warnings. Its warnings are
                             # its own housekeeping, e.g. a resource request to its autoscaling coordinator timed
                             # out on a busy head, logged with a 20-line traceback although "safe to ignore".
                             logging_config=LoggingConfig(log_level="ERROR")),
    )
    try:
        return trainer.fit()
    except ray.train.ControllerError as err:
        if (cause := not_retried(err)) is not None:  # a worker's error that a retry cannot fix, as it said it
            raise cause from None
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML, e.g. experiments/demo_digits.yaml")
    add_set_argument(parser, "cluster.num_workers=2")
    add_summary_argument(parser)
    add_runtime_env_argument(parser)
    args = parser.parse_args(argv)
    try:
        runtime_env = parse_runtime_env(args.runtime_env)
        launch = load_launch(args.config, args.overrides, Path.cwd())
        if args.summary_json:  # written once the run is done: it must be writable before the run starts
            check_output_file(Path(args.summary_json).expanduser().resolve(), "--summary-json")
        summary = run_experiment(launch, Path.cwd(), runtime_env)
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:  # not retried: resumed exactly, it diverges again
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ray.train.TrainingFailedError as err:
        print(f"error: training failed after the allowed worker restarts: {describe_failure(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the run is stopped and marked KILLED in MLflow; run the same command to resume it from "
              "its last checkpoint", file=sys.stderr)
        return 130
    emit_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
