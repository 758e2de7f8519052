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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mupvit.config import Config, ConfigError, coerce_value, load_config, parse_override, total_steps, validate
from mupvit.config_yaml import read_yaml
from mupvit.errors import shown
from mupvit.models.parametrization import with_width

DOMAINS = ("grid", "log2_grid", "choice", "loguniform", "uniform")
ALGORITHMS = ("grid", "random", "optuna")
SCHEDULERS = ("none", "asha")
TOP_KEYS = {"name", "base", "overrides", "space", "search", "scheduler", "metric", "mode", "num_samples",
            "max_concurrent", "trial_cpus", "trial_gpus", "trial_workers"}


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

    def override_list(self, extra: dict[str, Any] | None = None) -> list[str]:
        merged = {**self.overrides, **(extra or {})}
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in merged.items()]

    def trial_config(self, sampled: dict[str, Any]) -> Config:
        """The base experiment with the fixed overrides and the sampled values; a sampled model.width widens the
        base model by its widening rule (heads and mlp_dim follow), as µP's width transfer assumes."""
        rest = {k: v for k, v in sampled.items() if k != "model.width"}
        cfg = load_config(self.base, self.override_list(rest))
        if "model.width" in sampled:
            cfg = dataclasses.replace(cfg, model=with_width(cfg.model, int(sampled["model.width"])))
            validate(cfg)
        return cfg

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
        raise _fail(p, f"expected a mapping of sweep keys, got {type(raw).__name__}")
    for text in sets:  # --set applies to the sweep's fixed overrides
        key, value = parse_override(text)
        raw.setdefault("overrides", {})[key] = value
    unknown = sorted(set(raw) - TOP_KEYS, key=str)
    if unknown:
        raise _fail(p, f"unknown key(s) {', '.join(map(str, unknown[:8]))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "base", "space"):
        if key not in raw:
            raise _fail(p, f"missing '{key}'")
    base_path = Path(str(raw["base"])).expanduser()
    if not base_path.is_file():
        raise _fail(p, f"base: experiment file {base_path} not found (paths are relative to the current directory)")
    raw["base"] = str(base_path.resolve())  # trials run in their own directories
    search, sched = raw.get("search") or {}, raw.get("scheduler") or {}
    for key, section in (("search", search), ("scheduler", sched), ("overrides", raw.get("overrides") or {}),
                         ("space", raw["space"])):
        if not isinstance(section, dict):
            raise _fail(p, f"{key}: expected a mapping, got {shown(section)}")

    def typed(where: str, value: Any, tp: type) -> Any:  # the config's own typed parsing (finite numbers, ...)
        try:
            return coerce_value(where, value, tp)
        except ConfigError as err:
            raise _fail(p, str(err)) from None

    spec = SweepSpec(
        name=typed("name", raw["name"], str), base=str(raw["base"]), overrides=dict(raw.get("overrides") or {}),
        space=dict(raw["space"]), algorithm=typed("search.algorithm", search.get("algorithm", "grid"), str),
        seed=typed("search.seed", search.get("seed", 0), int),
        scheduler=typed("scheduler.type", sched.get("type", "none"), str),
        grace_period=typed("scheduler.grace_period", sched.get("grace_period", 1), int),
        reduction_factor=typed("scheduler.reduction_factor", sched.get("reduction_factor", 3), float),
        metric=typed("metric", raw.get("metric", "train/loss_avg"), str),
        mode=typed("mode", raw.get("mode", "min"), str),
        num_samples=typed("num_samples", raw.get("num_samples", 1), int),
        max_concurrent=typed("max_concurrent", raw.get("max_concurrent", 1), int),
        trial_cpus=typed("trial_cpus", raw.get("trial_cpus", 1), float),
        trial_gpus=typed("trial_gpus", raw.get("trial_gpus", 0), float),
        trial_workers=typed("trial_workers", raw.get("trial_workers", 1), int), path=p)
    _check(spec)
    return spec


def _check(spec: SweepSpec) -> None:
    p = spec.path
    if spec.algorithm not in ALGORITHMS:
        raise _fail(p, f"search.algorithm: got {spec.algorithm!r}, expected one of {', '.join(ALGORITHMS)}")
    if spec.scheduler not in SCHEDULERS:
        raise _fail(p, f"scheduler.type: got {spec.scheduler!r}, expected one of {', '.join(SCHEDULERS)}")
    if spec.mode not in ("min", "max"):
        raise _fail(p, f"mode: got {spec.mode!r}, expected min or max")
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
        base = load_config(spec.base, spec.override_list())
    except ConfigError as err:
        raise _fail(p, f"base/overrides: {err}") from None
    for point in spec.points():  # each trial's config must be valid: unknown keys, widths off the head rule, ...
        try:
            spec.trial_config(point)
        except ConfigError as err:
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())
            raise _fail(p, f"space point ({shown}): {err}") from None
    if spec.scheduler == "asha":
        steps = total_steps(base) if base.train.total_steps or base.data.num_train_examples else math.inf
        if spec.grace_period >= steps:
            raise _fail(p, f"scheduler.grace_period: {spec.grace_period} steps is not below the trials' {steps}")


def with_trial_settings(cfg: Config, out_dir: str) -> Config:
    """A trial's own out_dir; checkpoints resume through Tune, so train.resume is off."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=out_dir, resume=False))
