"""data.pipeline ray_data: one rank's train stream as Ray Data tasks on the cluster's CPUs.

The dataset is built from stream positions, not from files: block i is step start + i, whose rank share the task
computes with the same per-sample code as the local loader (mupvit.data.train_stream over StreamBatchSampler's
positions), so the batches are those of `train_loader` bit for bit and the stream starts at any step (Ray Data's
iterator cannot resume mid-epoch, ray-project/ray#37633). Blocks come back in step order (preserve_order).

Memory: the input's object-store budget is BATCHES_IN_FLIGHT of the rank's batches (at least MIN_BUDGET_BYTES); Ray
Data's backpressure holds further tasks back while that much is built and unread, so a slow trainer does not fill
the object store. A 256-image rank batch of 224x224x3 uint8 crops (data.augment_on device) is 38.5 MB: 308 MB.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.data
import torch
from torch.utils.data import default_collate

from mupvit.config import Config
from mupvit.data import train_stream
from mupvit.data.datasets import DataError, Split
from mupvit.data.plan import plan_length
from mupvit.data.stream import StreamBatchSampler, TrainSample
from mupvit.train import TrainBatches
from orchestration.cluster import ClusterError, carries, label_flag
from orchestration.launch_config import ClusterConfig

BATCHES_IN_FLIGHT = 8
MIN_BUDGET_BYTES = 32 * 2**20  # a floor, so that a tiny batch still leaves Ray Data room for a few blocks
# Steps per dataset: a run is read as consecutive datasets of this many one-step blocks, so that a long run never
# plans hundreds of thousands of blocks at once. Each dataset's executor is a coordinator actor whose start costs
# about 4 s of CPU on the trainer's node (measured here): 2,048 steps amortize it (an ImageNet epoch is 1,251 steps
# of 1,024 images), and the next window's actor starts while this one is read.
WINDOW_STEPS = 2048
# Per task process: the split of the dataset it serves, read from the object store once rather than once per task
# (ImageNet's 1.28M (path, label) pairs take about a second to unpickle).
_SPLITS: dict[str, Split] = {}


@dataclass(frozen=True)
class Placement:
    """Where the input tasks run: `cpus`, the most CPUs they hold at once (None: any free); `resource`, a custom
    resource that only the chosen nodes offer (e.g. started with --resources='{"data_cpu": 8}'; None: any node);
    `label`, a node label selector (e.g. {"node-type": "cpu"}; None: any node)."""

    cpus: float | None = None
    resource: str | None = None
    label: dict[str, str] | None = None


def sample_bytes(cfg: Config) -> int:
    """One sample's bytes as a task hands it over: a uint8 crop and its plan, or a finished float32 image."""
    pixels = 3 * cfg.data.image_size ** 2
    if cfg.data.augment_on == "device":
        return pixels + 4 * plan_length(cfg.data.randaug_layers) + 24
    return 4 * pixels + 24  # label, skipped, recovered: int64 each


def budget_bytes(cfg: Config, world: int) -> int:
    """The object-store budget of one rank's input (module docstring)."""
    per_rank = cfg.train.batch_size // world
    return max(MIN_BUDGET_BYTES, BATCHES_IN_FLIGHT * per_rank * sample_bytes(cfg))


def stored_split(ref: ray.ObjectRef) -> Split:
    key = ref.hex()
    if key not in _SPLITS:
        _SPLITS.clear()  # one dataset's split at a time
        _SPLITS[key] = ray.get(ref)
    return _SPLITS[key]


def step_batch(steps: dict[str, np.ndarray], cfg: Config, split: ray.ObjectRef, start: int, rank: int,
               world: int) -> dict[str, np.ndarray]:
    """The Ray Data task: the rank's share of each step in `steps` (ids relative to `start`), as columns. An empty
    plan (data.augment_on loader) is left out: the reader puts it back."""
    stream = train_stream(cfg, stored_split(split))
    samples = []
    for i in steps["id"]:
        step = start + int(i)
        (positions,) = StreamBatchSampler(step, step + 1, cfg.train.batch_size, rank, world)
        samples += [stream[p] for p in positions]
    batch: TrainSample = default_collate(samples)
    columns = {"image": batch.image.numpy(), "label": batch.label.numpy(), "skipped": batch.skipped.numpy(),
               "recovered": batch.recovered.numpy()}
    if batch.plan.shape[1]:
        columns["plan"] = batch.plan.numpy()
    return columns


def stream_dataset(cfg: Config, split: Split, start: int, end: int, rank: int = 0, world: int = 1,
                   placement: Placement = Placement()) -> ray.data.Dataset:
    """The rank's batches of steps [start, end) as a Ray Data dataset: one block per step, in step order."""
    ds = ray.data.range(end - start, override_num_blocks=max(1, end - start))
    options = ds.context.execution_options
    options.preserve_order, options.verbose_progress = True, False
    # Its progress as log records (INFO: the session's log files, not the console), never as tqdm bars that a Ray
    # worker forwards to the driver's console; turning progress off instead warns on the console once per process.
    ds.context.use_ray_tqdm, ds.context.print_on_execution_start = False, False
    ds.context.raise_original_map_exception = True  # a task's DataError reaches the reader, not a UserCodeException
    options.resource_limits = options.resource_limits.copy(
        cpu=placement.cpus, object_store_memory=budget_bytes(cfg, world))
    remote = {"resources": {placement.resource: 0.001}} if placement.resource else {}
    return ds.map_batches(step_batch, batch_size=1, num_cpus=1, label_selector=placement.label,
                          fn_kwargs={"cfg": cfg, "split": ray.put(split), "start": start, "rank": rank,
                                     "world": world},
                          **remote)


def data_error(err: BaseException | None) -> DataError | None:
    """The mupvit DataError (a bad file, storage down) that a Ray Data failure wraps, if any, as the task raised it."""
    while err is not None:
        if isinstance(err, DataError) and not isinstance(err, ray.exceptions.RayTaskError):
            return type(err)(str(err).splitlines()[0])  # without the retry advice Ray Data appends to it
        err = getattr(err, "cause", None) or err.__cause__  # RayTaskError.cause: the task's own exception
    return None


def ray_data_batches(cfg: Config, split: Split, start_step: int, end_step: int, rank: int = 0, world: int = 1,
                     pin_memory: bool = False, placement: Placement = Placement()) -> Iterator[TrainSample]:
    """TrainSample batches of steps [start_step, end_step) from Ray Data tasks: train_loader's batches, computed on
    the cluster (mupvit.train.run's `batches`)."""
    per_rank = cfg.train.batch_size // world
    for shard in window_shards(cfg, split, start_step, end_step, rank, world, placement):
        try:
            for b in shard.iter_torch_batches(batch_size=per_rank, device="cpu", pin_memory=pin_memory,
                                              prefetch_batches=2):
                plan = b.get("plan", torch.empty((per_rank, 0), dtype=torch.int32))
                yield TrainSample(b["image"], b["label"], b["skipped"], plan, b["recovered"])
        except Exception as err:
            found = data_error(err)
            if found is None:
                raise
            raise found from None


def window_shards(cfg: Config, split: Split, start_step: int, end_step: int, rank: int, world: int,
                  placement: Placement) -> Iterator[ray.data.DataIterator]:
    """The datasets of steps [start_step, end_step), WINDOW_STEPS at a time, each as the one split of one: Ray
    Data's executor (its scheduling loop, ~10 ms of CPU per block) then runs in a coordinator actor on this node
    rather than in the trainer's process, which only fetches the blocks (benchmarks/ray_data_throughput.py: 11% ->
    3% of a core). The next window's coordinator is made one window ahead, so its start overlaps this one's reading."""
    def shard(first: int) -> ray.data.DataIterator:
        (only,) = stream_dataset(cfg, split, first, min(end_step, first + WINDOW_STEPS), rank, world,
                                 placement).streaming_split(1)
        return only

    firsts = list(range(start_step, end_step, WINDOW_STEPS))
    ahead = shard(firsts[0]) if firsts else None
    for i in range(len(firsts)):
        current, ahead = ahead, shard(firsts[i + 1]) if i + 1 < len(firsts) else None
        yield current


def train_batches(cfg: Config, cluster: ClusterConfig) -> TrainBatches | None:
    """What makes the run's train batches for mupvit.train.run: None (its own loader) for data.pipeline local, else
    ray_data_batches placed as the cluster section says."""
    if cfg.data.pipeline == "local":
        return None
    return functools.partial(ray_data_batches, placement=Placement(cluster.data_cpus, cluster.data_resource,
                                                                   cluster.data_labels))


def input_node(node: dict[str, Any], c: ClusterConfig) -> bool:
    """Whether an input task may run on `node`: it has a CPU, offers cluster.data_resource and carries every label
    of cluster.data_labels (each unset: any node)."""
    resources = node["Resources"]
    return bool(resources.get("CPU")) and (not c.data_resource or bool(resources.get(c.data_resource))) and \
        carries(node, c.data_labels)


def check_input_capacity(cfg: Config, c: ClusterConfig, nodes: list[dict[str, Any]] | None = None) -> None:
    """data.pipeline ray_data: fail within seconds where no input task could ever run (its tasks would wait forever
    and the workers with them): no node offers cluster.data_resource and carries cluster.data_labels, or the
    workers leave no CPU free."""
    if cfg.data.pipeline == "local":
        return
    nodes = [n for n in (nodes if nodes is not None else ray.nodes()) if n.get("Alive")]
    if c.data_resource or c.data_labels:
        if not any(input_node(n, c) for n in nodes):
            keys, flags = [], []
            if c.data_resource:
                keys.append("cluster.data_resource")
                flags.append(f"--resources='{{\"{c.data_resource}\": N}}'")
            if c.data_labels:
                keys.append("cluster.data_labels")
                flags.append(label_flag(c.data_labels))
            raise ClusterError(f"{' and '.join(keys)}: no node of the cluster with a CPU matches, so no input task "
                               f"of data.pipeline ray_data could run; start the input nodes with {' '.join(flags)} "
                               f"or unset {' and '.join(keys)}")
        return
    cpus = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
    if cpus - c.max_workers * c.cpus_per_worker < 1:  # an elastic run may grow to its max
        raise ClusterError(f"data.pipeline ray_data: the cluster has {cpus:g} CPU, all held by cluster.num_workers="
                           f"{c.max_workers} x {c.cpus_per_worker:g} CPU, so no input task could run; add a CPU "
                           "node, lower cluster.cpus_per_worker, or set data.pipeline=local")
