"""Sweep files (experiments/sweeps/*.yaml): parsing, validation before any trial starts, and the Tune space.

    name: demo_mup_transfer
    base: experiments/demo_digits.yaml        # the experiment every trial starts from
    overrides: {train.total_steps: 120}       # fixed for every trial (e.g. a shorter proxy budget)
    space:                                    # searched keys; one of grid | log2_grid | choice | loguniform | uniform
      model.parametrization: {grid: [sp, mup]}
      model.width: {grid: [32, 64, 128]}
      optim.lr: {log2_grid: [-11, -9, -7, -5]}
    search: {algorithm: grid, seed: 0}        # grid | random | optuna (TPE)
    scheduler: {type: asha, grace_period: 40, reduction_factor: 3}   # or {type: none}; steps
    metric: train/loss_avg                    # a reported metric; mode min | max
    mode: min
    num_samples: 1                            # per grid point (grid), or trials drawn (random, optuna)
    max_concurrent: 1
    trial_cpus: 2                             # CPUs of one trial (all its workers together)
    trial_gpus: 0                             # GPUs of one trial (all its workers together)
    trial_workers: 1                          # > 1: each trial is a data-parallel Ray Train run of that many workers
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mupvit.config import Config, ConfigError, ModelConfig, parse_override, total_steps, with_overrides
from mupvit.config_yaml import read_experiment, read_yaml
from mupvit.errors import shown
from mupvit.models.parametrization import with_width
from mupvit.schema import build, check_folder_name
from orchestration.launch_config import Launch, launch_from_dict

DOMAINS = ("grid", "log2_grid", "choice", "loguniform", "uniform")


@dataclass
class SearchSection:
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    seed: int = 0


@dataclass
class SchedulerSection:
    type: Literal["none", "asha"] = "none"
    grace_period: int = 1  # steps
    reduction_factor: float = 3.0


@dataclass
class SweepFile:
    """A sweep file as written, read by the config's own schema machinery (mupvit.schema)."""

    name: str
    base: str
    space: dict[str, dict[str, list[Any]]]
    overrides: dict[str, Any] = field(default_factory=dict)
    search: SearchSection = field(default_factory=SearchSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    metric: str = "train/loss_avg"
    mode: Literal["min", "max"] = "min"
    num_samples: int = 1
    max_concurrent: int = 1
    trial_cpus: float = 1.0
    trial_gpus: float = 0.0
    trial_workers: int = 1


@dataclass
class SweepSpec:
    name: str
    base: str
    overrides: dict[str, Any]
    space: dict[str, dict[str, Any]]
    algorithm: str = "grid"
    seed: int = 0
    scheduler: str = "none"
    grace_period: int = 1
    reduction_factor: float = 3.0
    metric: str = "train/loss_avg"
    mode: str = "min"
    num_samples: int = 1
    max_concurrent: int = 1
    trial_cpus: float = 1.0
    trial_gpus: float = 0.0
    trial_workers: int = 1
    path: str = ""
    # The base experiment's settings (its base chain merged), read once by the driver: a trial may run on a node
    # that cannot see the driver's files.
    base_tree: dict[str, Any] = field(default_factory=dict, repr=False)

    def override_list(self, extra: dict[str, Any] | None = None) -> list[str]:
        merged = {**self.overrides, **(extra or {})}
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in merged.items()]

    def trial_launch(self, sampled: dict[str, Any], base_dir: Path = Path("."),
                     storage: str | None = None) -> Launch:
        """The base experiment with the fixed overrides and the sampled values, resolved and validated once. A
        sampled model.width widens the base model by its widening rule (heads and mlp_dim follow), as µP's width
        transfer assumes. With `storage` and trial_workers > 1, the trial is a Ray Train run of its own: its
        workers share trial_cpus / trial_gpus, and its checkpoints go under `storage`."""
        sets = self.override_list({k: v for k, v in sampled.items() if k != "model.width"})
        if storage is not None and self.trial_workers > 1:
            w, gpus = self.trial_workers, self.trial_gpus
            sets += [f"cluster.num_workers={w}", f"cluster.cpus_per_worker={self.trial_cpus / w}",
                     f"cluster.use_gpu={'true' if gpus else 'false'}",
                     *([f"cluster.gpus_per_worker={gpus / w}"] if gpus else []),
                     f"cluster.storage_path={storage.rstrip('/')}/sweeps/{self.name}/trials"]
        tree = with_overrides(self.base_tree, sets)
        if "model.width" in sampled:
            model = build(ModelConfig, tree.get("model") or {}, "model")
            tree["model"] = dataclasses.asdict(with_width(model, int(sampled["model.width"])))
        return launch_from_dict(tree, base_dir=base_dir, source=self.base)

    def trial_config(self, sampled: dict[str, Any]) -> Config:
        """The run a trial computes (trial_launch's run)."""
        return self.trial_launch(sampled).run

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the space's values (continuous domains contribute their two ends)."""
        combos: list[dict[str, Any]] = [{}]
        for key, dom in self.space.items():
            combos = [{**c, key: v} for c in combos for v in domain_values(dom)]
        return combos


def domain_values(dom: dict[str, Any]) -> list[Any]:
    """The listed values of a domain (a continuous one's two ends), log2 grids as learning rates."""
    (kind, values), = dom.items()
    return [2.0 ** v for v in values] if kind == "log2_grid" else list(values)


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def load_sweep(path: str | Path, sets: list[str] = ()) -> SweepSpec:
    """Read and validate a sweep file; every trial's config is built (and so validated) here."""
    p = str(path)
    if not Path(p).is_file():
        raise ConfigError(f"sweep file not found: {p}")
    raw = read_yaml(Path(p)) or {}
    if not isinstance(raw, dict):
        raise _fail(p, f"expected a mapping of sweep keys, got {shown(raw)}")
    for text in sets:  # --set applies to the sweep's fixed overrides
        key, value = parse_override(text)
        if isinstance(raw.get("space"), dict) and key in raw["space"]:
            raise _fail(p, f"--set {key}: the sweep searches {key} (space.{key}); a fixed value would be overridden "
                           "by every trial's sample: drop the --set, or remove the key from the space")
        raw.setdefault("overrides", {})[key] = value
    for key in ("search", "scheduler", "overrides"):
        raw[key] = raw.get(key) or {}
    try:
        f = build(SweepFile, raw)
    except ConfigError as err:
        raise _fail(p, str(err)) from None
    check_folder_name(f"{p}: name", f.name)  # a folder under the storage path
    base_path = Path(f.base).expanduser()
    if not base_path.is_file():
        raise _fail(p, f"base: experiment file {base_path} not found (paths are relative to the current directory)")
    try:
        base_tree, _ = read_experiment(base_path.resolve())
    except ConfigError as err:
        raise _fail(p, f"base/overrides: {base_path.resolve()}: {err}") from None
    spec = SweepSpec(
        name=f.name, base=str(base_path.resolve()), base_tree=base_tree,  # trials run in their own directories
        overrides=f.overrides, space=f.space, algorithm=f.search.algorithm, seed=f.search.seed,
        scheduler=f.scheduler.type, grace_period=f.scheduler.grace_period,
        reduction_factor=f.scheduler.reduction_factor, metric=f.metric, mode=f.mode, num_samples=f.num_samples,
        max_concurrent=f.max_concurrent, trial_cpus=f.trial_cpus, trial_gpus=f.trial_gpus,
        trial_workers=f.trial_workers, path=p)
    _check(spec)
    return spec


def _check(spec: SweepSpec) -> None:
    p = spec.path
    for key, value in (("num_samples", spec.num_samples), ("max_concurrent", spec.max_concurrent),
                       ("trial_cpus", spec.trial_cpus), ("trial_workers", spec.trial_workers),
                       ("scheduler.grace_period", spec.grace_period)):
        if value <= 0:
            raise _fail(p, f"{key}: got {value}, expected a positive number")
    if spec.trial_gpus < 0:
        raise _fail(p, f"trial_gpus: got {spec.trial_gpus}, expected >= 0")
    if spec.trial_workers > 1 and spec.trial_gpus and spec.trial_gpus % spec.trial_workers:
        raise _fail(p, f"trial_gpus: {spec.trial_gpus:g} GPUs do not split evenly over trial_workers="
                       f"{spec.trial_workers}; give each worker whole GPUs")
    if spec.scheduler == "asha" and spec.reduction_factor <= 1:
        raise _fail(p, f"scheduler.reduction_factor: got {spec.reduction_factor}, expected > 1")
    if not spec.space:
        raise _fail(p, "space: empty; name at least one key to search")
    for key, dom in spec.space.items():
        if not isinstance(dom, dict) or len(dom) != 1 or next(iter(dom)) not in DOMAINS:
            raise _fail(p, f"space.{key}: got {dom!r}, expected one of {{{' | '.join(DOMAINS)}: values}}")
        (kind, values), = dom.items()
        if not isinstance(values, list) or not values:
            raise _fail(p, f"space.{key}.{kind}: expected a non-empty list")
        if kind in ("loguniform", "uniform") and (len(values) != 2 or not values[0] < values[1]):
            raise _fail(p, f"space.{key}.{kind}: expected [low, high] with low < high, got {values}")
        if key == "optim.lr" and any(v <= 0 for v in domain_values(dom)):
            raise _fail(p, f"space.optim.lr: learning rates must be > 0, got {values}")
    try:
        base = spec.trial_config({})
    except ConfigError as err:
        raise _fail(p, f"base/overrides: {spec.base}: {err}") from None
    if base.data.pipeline != "local":  # its tasks would compete with the packed trials for CPUs, and wait forever
        raise _fail(p, f"base/overrides: data.pipeline {base.data.pipeline}: sweep trials read their data with the "
                       "local loader; set data.pipeline: local in overrides")
    for point in spec.points():  # each trial's config must be valid: unknown keys, widths off the head rule, ...
        try:
            spec.trial_config(point)
        except ConfigError as err:
            where = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())
            raise _fail(p, f"space point ({where}): {err}") from None
    if spec.scheduler == "asha":
        steps = total_steps(base) if base.train.total_steps or base.data.num_train_examples else math.inf
        if spec.grace_period >= steps:
            raise _fail(p, f"scheduler.grace_period: {spec.grace_period} steps is not below the trials' {steps}")
