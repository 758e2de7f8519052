"""Where and how a run is launched and recorded: the `cluster` and `tracking` sections of an experiment file, read
with the same schema as the run's own config (mupvit.config), and resolved once per process into a `Launch`:
the run's Config with its derived values set (train.devices = cluster.num_workers, or its max and train.min_devices
its min for an elastic run) and the storage path made absolute."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mupvit.config import LAUNCHER_SECTIONS, Config, config_from_dict, with_overrides
from mupvit.config_yaml import chain_text, read_experiment
from mupvit.errors import ConfigError, shown
from mupvit.schema import build, check_folder_name, check_signs


@dataclass
class ClusterConfig:
    """Where `python -m orchestration.train` runs the loop (Ray Train)."""

    address: str | None = None  # Ray cluster address; else $RAY_ADDRESS; else a local Ray on this machine
    # Data-parallel workers (sets train.devices), or [min, max]: an elastic run that starts with as many as the
    # cluster holds, up to max, goes on with fewer (down to min) when nodes are lost, and grows back when nodes
    # come (checked every resize_check_s; a resize restarts the workers from the latest checkpoint).
    num_workers: int | list[int] = 1
    resize_check_s: float = 60.0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used with use_gpu
    # Ray Train storage for checkpoints: a local folder (relative to the submit directory), a path every node
    # shares, or a bucket URI (s3://, gs://).
    storage_path: str = "ray_results"
    # Worker failures survived by restarting from the latest checkpoint; -1: always (a spot cluster whose nodes come
    # back). Preemptions are not counted here: Ray Train retries them always (orchestration/preemption.py).
    max_failures: int = 2
    keep_checkpoints: int = 2
    resource_wait_s: float = 60.0  # how long to wait for busy resources before failing (never hang)
    # With an autoscaler: how long a run waits for the nodes its workers need (cloud GPU nodes take minutes).
    scale_up_wait_s: float = 900.0
    fail_at_step: int | None = None  # testing aid: one worker raises once at this step (one-shot)
    # data.pipeline ray_data: the most CPUs each worker's input tasks hold at once (null: any free CPU); a custom
    # resource that only the nodes meant for the input offer (e.g. CPU-only nodes started with
    # --resources='{"data_cpu": 16}'); node labels they must carry (e.g. {"node-type": "cpu"} for nodes started
    # with --labels="node-type=cpu", as KubeRay sets them per worker group). Null: any node with a free CPU.
    data_cpus: float | None = None
    data_resource: str | None = None
    data_labels: dict[str, str] | None = None
    # Node labels the training workers' nodes must carry (e.g. {"node-type": "gpu"}), so that they stay off the
    # CPU-only input nodes; null: any node with the workers' resources.
    worker_labels: dict[str, str] | None = None

    @property
    def min_workers(self) -> int:
        """The fewest workers the run trains with (num_workers when it is one number)."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        """The most workers the run trains with: train.devices, which fixes its MixUp pairs."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[-1]

    @property
    def elastic(self) -> bool:
        return not isinstance(self.num_workers, int)

    @property
    def ray_num_workers(self) -> int | tuple[int, int]:
        """ScalingConfig's num_workers: a number, or Ray Train's elastic (min, max)."""
        return (self.min_workers, self.max_workers) if self.elastic else self.num_workers


@dataclass
class TrackingConfig:
    """MLflow tracking for orchestration runs."""

    uri: str | None = None  # else $MLFLOW_TRACKING_URI; else sqlite:///<submit dir>/mlflow.db
    experiment: str = "mupvit"
    run_name: str | None = None  # also the Ray Train run name; default <config file stem>-<run fingerprint>
    ablation: str | None = None  # the paper ablation this run belongs to (tag for the report)


@dataclass
class LaunchSections:
    """The launcher's sections of an experiment file (mupvit.config.LAUNCHER_SECTIONS)."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass(frozen=True)
class Launch:
    """One run and its launch, resolved: `run` is what the workers compute, the rest where and how."""

    run: Config
    cluster: ClusterConfig
    tracking: TrackingConfig
    source: str  # the experiment file (its stem names the run)

    def sections(self) -> dict[str, Any]:
        """The launcher's sections as plain data."""
        return {"cluster": dataclasses.asdict(self.cluster), "tracking": dataclasses.asdict(self.tracking)}

    def to_dict(self) -> dict[str, Any]:
        """The whole experiment as one mapping, as its file is laid out."""
        return {**self.run.to_dict(), **self.sections()}


_POSITIVE = ("cpus_per_worker", "keep_checkpoints", "gpus_per_worker", "fail_at_step", "data_cpus")
_NON_NEGATIVE = ("resource_wait_s", "scale_up_wait_s", "resize_check_s")


def check_worker_range(c: ClusterConfig) -> None:
    """cluster.num_workers: a positive count, or [min, max]: two positive counts, min below max."""
    if not c.elastic and c.num_workers <= 0:
        raise ConfigError(f"cluster.num_workers: got {c.num_workers}, expected a positive number")
    if c.elastic and (len(c.num_workers) != 2 or not 0 < c.num_workers[0] < c.num_workers[1]):
        raise ConfigError(f"cluster.num_workers: {c.num_workers}: give one count, or [min, max] with 0 < min < max "
                          "for an elastic run (e.g. [2, 4])")


def check_labels(name: str, labels: dict[str, str] | None) -> None:
    """A node label selector of exact values: the capacity checks (orchestration.cluster.carries) match values
    exactly, so Ray's operators (!value, in(...)) are refused rather than misread."""
    for key, value in (labels or {}).items():
        if not value:  # (an empty key is refused by the schema)
            raise ConfigError(f"{name}: {key!r}: {value!r}: a label selector needs a key and a value "
                              "(as in --labels=\"node-type=cpu\")")
        if value.startswith(("!", "in(")):
            raise ConfigError(f"{name}: {key}: {value!r}: only exact values are supported (the label the nodes "
                              "were started with, as in --labels=\"node-type=cpu\"), not Ray's !/in() operators")


def labels_arg(labels: dict[str, str]) -> str:
    """The value of `ray start --labels` that gives a node `labels`: key=value,key=value."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


def launch_from_dict(data: dict[str, Any], overrides: list[str] = (), base_dir: Path = Path("."),
                     source: str = "") -> Launch:
    """The Launch of an experiment tree with `--set` overrides, derived values set and validated once."""
    tree = with_overrides(data, overrides)
    if not isinstance(tree, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {shown(tree)}")
    sections = build(LaunchSections, {k: tree[k] for k in LAUNCHER_SECTIONS if k in tree})
    c = sections.cluster
    check_worker_range(c)
    check_signs(c, _POSITIVE, _NON_NEGATIVE, prefix="cluster.")
    if c.max_failures < -1:
        raise ConfigError(f"cluster.max_failures: {c.max_failures}: give the worker failures to survive (0 or more), "
                          "or -1 to restart after every one (a spot cluster)")
    for name in ("data_labels", "worker_labels"):
        check_labels(f"cluster.{name}", getattr(c, name))
    if c.elastic and c.worker_labels and not c.use_gpu:
        raise ConfigError(f"cluster.num_workers: {c.num_workers} with cluster.worker_labels: an elastic run is "
                          "sized by every node's CPUs (Ray Train's elastic policy ignores node labels), so it could "
                          "start more workers than the labelled nodes hold; give one worker count, or a GPU run "
                          "(cluster.use_gpu)")
    if sections.tracking.run_name is not None:
        check_folder_name("tracking.run_name", sections.tracking.run_name)  # a folder under cluster.storage_path
    if "://" not in c.storage_path:
        c = dataclasses.replace(c, storage_path=str((base_dir / c.storage_path).expanduser().resolve()))
    elif c.fail_at_step is not None:
        raise ConfigError("cluster.fail_at_step: needs a local cluster.storage_path (it keeps a one-shot marker)")
    train = tree.get("train")
    if train is None or isinstance(train, dict):  # a bad section is named by the run's own schema
        # One device per data-parallel worker; an elastic run's config is that of its most workers.
        tree["train"] = {**(train or {}), "devices": c.max_workers,
                         **({"min_devices": c.min_workers} if c.elastic else {})}
    return Launch(config_from_dict(tree), c, sections.tracking, source)


def load_launch(path: str | Path, overrides: list[str] = (), base_dir: Path = Path(".")) -> Launch:
    """Read an experiment file (and its `base:` chain) for orchestration: the run and its launch, resolved."""
    data, chain = read_experiment(Path(path))
    try:
        return launch_from_dict(data, overrides, base_dir, str(path))
    except ConfigError as err:
        raise ConfigError(f"{chain_text(chain)}: {err}") from err
