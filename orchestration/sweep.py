"""A µP width / learning-rate sweep on Ray Tune, tracked in MLflow, ending in µTransfer.

    python -m orchestration.sweep experiments/sweeps/demo_mup_transfer.yaml
    python -m orchestration.sweep SWEEP.yaml --transfer-to experiments/vit_s16_i1k_90ep.yaml [--launch]

Everything is checked before the first trial (sweep file, every trial's config, a local storage path writable,
tracking store, one driver per sweep, cluster room for max_concurrent trials); then one MLflow parent run for the
sweep and one child run per trial. Trials that fail are left out of the result; when all fail, the sweep fails
with the first one's error (exit 2 for a bad input, else 1). Running the same command after the driver died
restores the Tune experiment (finished trials are kept, the searcher's state too).
Ctrl-C or SIGTERM stops the sweep (orchestration/sweep_stop.py): the parent run and the trials it was running end
KILLED, no best lr is reported, exit 130; the same command resumes it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.exceptions import RayTaskError
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from mupvit.config import Config, ConfigError, add_set_argument, total_steps
from mupvit.models.shapes import model_shape
from mupvit.outputs import check_output_file, check_writable
from mupvit.results import add_summary_argument, emit_summary
from orchestration.autoscaling import scaled_for
from orchestration.cluster import ClusterError, connect, node_count
from orchestration.failures import FAILURE_TAG, describe_failure
from orchestration.launch_config import Launch, load_launch
from orchestration.run_storage import is_bucket, ray_storage, stored_uri
from orchestration.runtime_env import add_runtime_env_argument, parse_runtime_env
from orchestration.signals import interrupt_on_sigterm
from orchestration.sweep_results import best_lr_table
from orchestration.sweep_spec import SweepSpec, load_sweep
from orchestration.sweep_stop import fit_until_stopped
from orchestration.sweep_trial import sweep_trial, trial_resources
from orchestration.tracking import check_store_shared, check_writable_store, open_run
from orchestration.tracking import tracking_uri as resolve_tracking_uri
from orchestration.train import INPUT_ERRORS, REPO, check_data_on_worker, log, run_experiment, run_lock


class SweepFailed(Exception):
    """Every trial of the sweep failed: no best lr. exit_code is README's: 2 when the first trial's error is a bad
    input (the others met the same, as a rule), else 1."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """Grids become grid_search for the grid algorithm and categorical choices for random / Optuna."""
    space = {}
    for key, dom in spec.space.items():
        (kind, values), = dom.items()
        listed = [2.0 ** v for v in values] if kind == "log2_grid" else list(values)
        if kind in ("grid", "log2_grid"):
            space[key] = tune.grid_search(listed) if spec.algorithm == "grid" else tune.choice(listed)
        elif kind == "choice":
            space[key] = tune.choice(listed)
        else:
            space[key] = (tune.loguniform if kind == "loguniform" else tune.uniform)(*listed)
    return space


def search_algorithm(spec: SweepSpec):
    if spec.algorithm == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=spec.seed))
    return BasicVariantGenerator(random_state=spec.seed if spec.algorithm == "random" else None,
                                 max_concurrent=spec.max_concurrent)


def limited(searcher, max_concurrent: int):
    """At most max_concurrent trials at once. Tune ignores TuneConfig.max_concurrent_trials when handed a generator
    (grid / random take the limit themselves, above), and trials whose driver reserves no CPU (multi-worker
    trials) would otherwise all start at once."""
    if isinstance(searcher, BasicVariantGenerator):
        return searcher
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def scheduler(spec: SweepSpec, steps: int):
    if spec.scheduler == "asha":
        return ASHAScheduler(time_attr="step", max_t=steps, grace_period=spec.grace_period,
                             reduction_factor=spec.reduction_factor)
    return FIFOScheduler()


def check_room(spec: SweepSpec) -> None:
    """max_concurrent trials must fit at once, or Tune would wait forever for the rest."""
    have = ray.cluster_resources()
    for key, per_trial in (("CPU", spec.trial_cpus), ("GPU", spec.trial_gpus)):
        need = spec.max_concurrent * per_trial
        if need > have.get(key, 0.0):
            raise ClusterError(f"max_concurrent={spec.max_concurrent} x trial_{key.lower()}s={per_trial:g} needs "
                               f"{need:g} {key}s but the cluster has {have.get(key, 0.0):g}; lower max_concurrent "
                               f"or trial_{key.lower()}s")


def trial_bundles(spec: SweepSpec) -> list[dict[str, float]]:
    """One bundle per worker of max_concurrent trials (a trial's workers share trial_cpus / trial_gpus), for an
    autoscaler."""
    w = spec.trial_workers
    per_worker = {"CPU": spec.trial_cpus / w, **({"GPU": spec.trial_gpus / w} if spec.trial_gpus else {})}
    return [per_worker] * (w * spec.max_concurrent)


def results_table(df: pd.DataFrame, spec: SweepSpec, base: Config, steps: int) -> pd.DataFrame:
    """Tune's trial results as the trial table of orchestration.sweep_results (plus the step each trial reached);
    a setting the sweep does not search is the base experiment's."""
    def searched(key: str, default: Any) -> pd.Series:
        column = f"config/{key}"
        return df[column] if column in df else pd.Series([default] * len(df), index=df.index)

    lr = searched("optim.lr", base.optim.lr).astype(float)
    step = df["step"].fillna(0).astype(int) if "step" in df else pd.Series([0] * len(df), index=df.index)
    diverged = df["diverged"].fillna(0).astype(bool) if "diverged" in df else pd.Series(False, index=df.index)
    value = df[spec.metric].astype(float) if spec.metric in df else pd.Series(math.nan, index=df.index)
    table = pd.DataFrame({
        "sweep": spec.name, "trial_id": df["trial_id"],
        "parametrization": searched("model.parametrization", base.model.parametrization),
        "width": searched("model.width", model_shape(base.model).width).astype(int),
        "lr": lr, "log2_lr": lr.map(lambda v: round(math.log2(v), 2)), "metric": spec.metric, "mode": spec.mode,
        "value": value.where(value.map(math.isfinite)), "diverged": diverged,
        # only a scheduler stops trials early; without one every trial ran its whole budget
        "early_stopped": ~diverged & (step < steps) if spec.scheduler != "none" else False, "step": step,
    })
    return table.sort_values(["parametrization", "width", "lr"]).reset_index(drop=True)


def close_children(client: MlflowClient, experiment_id: str, parent_id: str, last_steps: dict[str, int],
                   steps: int, stopped: bool = False, failed: dict[str, str] | None = None) -> None:
    """Trials that Tune stopped leave their child run RUNNING: those ASHA cut short are marked early-stopped
    (KILLED), those stopped at their final step (ASHA's max_t) finished. When Ctrl-C or SIGTERM stopped the sweep
    (`stopped`), `last_steps` holds only the trials Tune had ended; the others were running: KILLED, not
    early-stopped, and the resumed sweep continues them. A trial in `failed` ({trial_id: why}) whose run is still
    RUNNING died before it could say so itself (e.g. its process was killed): FAILED, with why."""
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    for child in children:
        if child.info.status != "RUNNING":
            continue
        trial = child.data.tags.get("trial_id", "")
        if trial in (failed or {}):
            client.set_tag(child.info.run_id, FAILURE_TAG, failed[trial])
            client.set_terminated(child.info.run_id, "FAILED")
        elif stopped and trial not in last_steps:
            client.set_terminated(child.info.run_id, "KILLED")
        elif last_steps.get(trial, 0) >= steps:
            client.set_terminated(child.info.run_id, "FINISHED")
        else:
            client.set_tag(child.info.run_id, "early_stopped", "true")
            client.set_terminated(child.info.run_id, "KILLED")


def ended_trials(df: pd.DataFrame) -> dict[str, int]:
    """{trial_id: last step} of the trials Tune ended (their last result is `done`: run to the end or stopped by
    ASHA), as opposed to those a stopped sweep was running."""
    if "done" not in df or "trial_id" not in df:  # no trial reported anything yet
        return {}
    ended = df[df["done"].fillna(False).astype(bool)]
    return dict(zip(ended["trial_id"], ended["step"].fillna(0).astype(int) if "step" in ended else [0] * len(ended),
                    strict=True))


def trial_failures(grid: Any, storage: str) -> list[tuple[str, BaseException, str]]:
    """(trial id, the trial's own error, where Tune keeps its traceback) of each trial that failed, in trial order.
    Tune hands a trial's exception back wrapped in a RayTaskError; `cause` is the trial's own."""
    failed = []
    for result in grid:
        if result.error is not None:
            err = result.error.cause if isinstance(result.error, RayTaskError) else result.error
            failed.append((str(result.metrics.get("trial_id", "?")), err,
                           stored_uri(storage, f"{result.path}/error.txt")))
    return failed


def transfer(spec: SweepSpec, best: pd.DataFrame, target: str, base_width: int) -> tuple[list[str], float]:
    """The full-width reproduction's overrides: µP's best lr at the widest proxy, with the proxies' base width."""
    rows = best[(best["parametrization"] == "mup") & best["best lr"].notna()]
    if rows.empty:
        raise ConfigError("--transfer-to: the sweep has no finished µP trial to transfer from")
    lr = float(rows.sort_values("width").iloc[-1]["best lr"])
    sets = [f"optim.lr={lr:.6g}", "model.parametrization=mup", f"model.base_width={base_width}"]
    load_launch(target, sets)  # the transferred experiment must be valid
    return sets, lr


def restore_or_start(spec: SweepSpec, trainable: Any, storage: str, steps: int, parent_id: str,
                     before: str) -> tune.Tuner:
    """The sweep's Tuner: restored from <storage>/sweeps/<name> when an earlier run of it left one there, else a new
    one. A bucket is opened as Ray Train opens a run's (run_storage.ray_storage: the AWS variables' endpoint and
    credentials), here and, through Tune, on the trials' nodes.

    Restoring unpickles `path`/tuner.pkl: whoever can write the sweep storage runs code here (the README's
    "Security" section), so a restore that fails is an error naming the folder, never a silent fresh start."""
    root, filesystem = ray_storage(f"{storage.rstrip('/')}/sweeps")
    path = f"{storage.rstrip('/')}/sweeps/{spec.name}"
    if tune.Tuner.can_restore(f"{root}/{spec.name}", storage_filesystem=filesystem):
        log(f"resuming sweep {spec.name} from {path} (MLflow parent run {parent_id}, was {before})")
        try:
            return tune.Tuner.restore(f"{root}/{spec.name}", trainable, resume_unfinished=True,
                                      restart_errored=True, storage_filesystem=filesystem)
        except Exception as err:
            raise ClusterError(f"cannot resume sweep {spec.name} from {path} ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'no message'}); if you did not write "
                               "that folder, do not trust it; move it away to start the sweep over") from err
    trials = len(spec.points()) * spec.num_samples if spec.algorithm == "grid" else spec.num_samples
    log(f"sweep {spec.name}: {trials} trial(s), MLflow parent run {parent_id}")
    return tune.Tuner(
        trainable, param_space=tune_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode,
                                    search_alg=limited(search_algorithm(spec), spec.max_concurrent),
                                    scheduler=scheduler(spec, steps), num_samples=spec.num_samples,
                                    # A reused actor would keep an ASHA-stopped trial's TorchTrainer (and its
                                    # workers' CPUs) alive: only one-worker trials reuse theirs.
                                    reuse_actors=spec.trial_workers == 1),
        run_config=tune.RunConfig(name=spec.name, storage_path=root, storage_filesystem=filesystem,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def run_sweep(spec: SweepSpec, base_dir: Path, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    base = spec.trial_launch({}, base_dir)  # absolute storage path, as single runs
    c = base.cluster
    bucket = is_bucket(c.storage_path)
    if not bucket:  # a bucket is checked on a worker node, by the data probe
        check_writable(Path(c.storage_path), "cluster.storage_path")
    uri = resolve_tracking_uri(base.tracking, base_dir)
    check_writable_store(uri)
    # One driver per sweep, locked before anything that waits, as orchestration.train locks a run: a second driver
    # is refused at once, naming the first. A bucket's lock lives in the Ray cluster: connected first.
    if bucket:
        log(f"connecting: {connect(c, runtime_env)}")
    with run_lock(c, f"sweeps/{spec.name}", f"sweep {spec.name}"):
        if not bucket:
            log(f"connecting: {connect(c, runtime_env)}")
        with scaled_for(lambda: check_room(spec), trial_bundles(spec), None, c.scale_up_wait_s, log):
            return sweep_locked(spec, base, uri, base_dir)


def sweep_locked(spec: SweepSpec, base: Launch, uri: str, base_dir: Path) -> dict[str, Any]:
    """run_sweep once connected and holding the sweep's lock: the cluster checks, the parent run, the trials."""
    interrupt_on_sigterm()  # after ray.init, whose own handler would exit at once; fit() takes both signals itself
    check_store_shared(uri, node_count())
    check_data_on_worker(base)
    run = base.run
    steps = total_steps(run) if run.train.total_steps or run.data.num_train_examples else 10**9
    client = MlflowClient(uri)
    parent_id, before = open_run(client, base, f"sweep:{spec.name}", REPO,
                                 extra_tags={"sweep": spec.name, "sweep_role": "parent", "search": spec.algorithm,
                                             "scheduler": spec.scheduler})
    if before != "NEW" and FAILURE_TAG in client.get_run(parent_id).data.tags:
        client.delete_tag(parent_id, FAILURE_TAG)  # why an earlier attempt failed no longer holds for this one
    experiment_id = client.get_run(parent_id).info.experiment_id
    stopped_line = (f"sweep {spec.name} is stopped and marked KILLED in MLflow (parent run {parent_id} and the "
                    "trials it was running); no best lr is reported; run the same command to resume it (finished "
                    "trials are kept)")
    storage = base.cluster.storage_path
    try:
        client.log_artifact(parent_id, spec.path)
        client.log_dict(parent_id, spec.space, "search_space.json")
        trainable = tune.with_resources(
            tune.with_parameters(sweep_trial, spec=spec, parent_run_id=parent_id, tracking_uri=uri, repo=str(REPO),
                                 base_dir=str(base_dir), storage=storage), trial_resources(spec))
        tuner = restore_or_start(spec, trainable, storage, steps, parent_id, before)
        # A failed trial is one line of ours (below), its traceback in its error.txt; not Tune's traceback each.
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        grid, stopped = fit_until_stopped(tuner)
        failures = [] if stopped else trial_failures(grid, storage)
        failed = {trial: describe_failure(err) for trial, err, _ in failures}
        if failures and len(failures) == len(grid):  # nothing to choose a best lr from
            close_children(client, experiment_id, parent_id, {}, steps, failed=failed)
            trial, err, where = failures[0]
            raise SweepFailed(f"all {len(grid)} trials of sweep {spec.name} failed; the first ({trial}): "
                              f"{failed[trial]} (its traceback: {where})", 2 if isinstance(err, INPUT_ERRORS) else 1)
    except KeyboardInterrupt:  # a signal before Tune could stop in order, or a second one: its trials die with us
        close_children(client, experiment_id, parent_id, {}, steps, stopped=True)
        client.set_terminated(parent_id, "KILLED")
        raise KeyboardInterrupt(stopped_line) from None
    except BaseException as err:
        said = str(err) if isinstance(err, (SweepFailed, *INPUT_ERRORS)) else describe_failure(err)  # as printed
        client.set_tag(parent_id, FAILURE_TAG, said)
        client.set_terminated(parent_id, "FAILED")
        raise
    if stopped:  # Tune ended fit() in order: its state is saved, the trials it was running are resumed next time
        close_children(client, experiment_id, parent_id, ended_trials(grid.get_dataframe()), steps, stopped=True)
        client.set_terminated(parent_id, "KILLED")
        raise KeyboardInterrupt(stopped_line)
    table = results_table(grid.get_dataframe(), spec, run, steps)
    # A trial that failed after reporting has a last result, from a step it did not finish: never the best.
    table.loc[table["trial_id"].isin(failed), "value"] = None
    best = best_lr_table(table)
    close_children(client, experiment_id, parent_id, dict(zip(table["trial_id"], table["step"].fillna(0), strict=True)),
                   steps, failed=failed)
    client.log_text(parent_id, table.to_csv(index=False), "trials.csv")
    client.log_text(parent_id, best.to_csv(index=False), "best_lr.csv")
    client.set_terminated(parent_id, "FINISHED")
    trial_steps = int(table["step"].fillna(0).sum())
    client.log_metric(parent_id, "trial_steps", trial_steps)
    for trial, _, where in failures:  # a trial that crashed (not one that diverged: that one is a result)
        log(f"trial {trial} failed: {failed[trial]} (its traceback: {where})")
    return {"sweep": spec.name, "parent_run_id": parent_id, "tracking_uri": uri, "trials": len(grid),
            "errored": len(failures), "trial_steps": trial_steps, "table": table, "best": best,
            "base_width": run.model.base_width}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep file, e.g. experiments/sweeps/demo_mup_transfer.yaml")
    add_set_argument(parser, "train.total_steps=60", "a fixed trial setting")
    parser.add_argument("--transfer-to", metavar="CONFIG", help="print the full-width run with the best µP lr")
    parser.add_argument("--launch", action="store_true", help="with --transfer-to: also run it (orchestration.train)")
    add_summary_argument(parser)
    add_runtime_env_argument(parser)
    args = parser.parse_args(argv)
    try:
        runtime_env = parse_runtime_env(args.runtime_env)
        spec = load_sweep(args.sweep, args.overrides)
        if args.transfer_to:
            load_launch(args.transfer_to)
        if args.summary_json:  # written once the sweep is done: it must be writable before the first trial
            check_output_file(Path(args.summary_json).expanduser().resolve(), "--summary-json")
        result = run_sweep(spec, Path.cwd(), runtime_env)
        failed = f" ({result['errored']} failed)" if result["errored"] else ""
        print(f"\nsweep {spec.name}: {result['trials']} trials{failed}, {result['trial_steps']} trial-steps")
        print(result["best"].to_string(index=False) if not result["best"].empty else "no trial finished")
        summary = {k: v for k, v in result.items() if k not in ("table", "best")}
        summary["best"] = result["best"].to_dict(orient="records")
        if args.transfer_to:
            sets, _ = transfer(spec, result["best"], args.transfer_to, result["base_width"])
            flags = [arg for s in sets for arg in ("--set", s)]
            command = ["python", "-m", "orchestration.train", args.transfer_to, *flags]
            print("µTransfer: " + " ".join(command))
            summary["transfer_command"] = command
            if args.launch:
                try:
                    summary["transfer_run"] = run_experiment(load_launch(args.transfer_to, sets, Path.cwd()),
                                                             Path.cwd(), runtime_env)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt("the µTransfer run is stopped and marked KILLED in MLflow; run the same "
                                            "command to resume it from its last checkpoint") from None
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: each stage says what it recorded
        said = str(stop) or "the sweep is stopped (before or after its trials ran); run the same command to resume it"
        print(f"interrupted: {said}", file=sys.stderr)
        return 130
    emit_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
