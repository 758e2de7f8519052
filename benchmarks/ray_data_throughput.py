"""Input-only images/s of the train stream, on ImageNet-sized JPEGs (500x375, generated), alternating rounds,
medians reported. Each side's batches are read in this process as the trainer reads them (the device half left
out: it is the same for both); the first batch of a round (worker or task start-up) is not timed.

Default: the same cores on either side: the local loader (DataLoader with `--cpus` workers) against
data.pipeline ray_data (Ray Data tasks capped at `--cpus` CPUs, cluster.data_cpus). Also the CPU this process
spends per wall second while reading (the trainer's own share of the input) and that of Ray Data's coordinator
actor (its executor, on the trainer's node).

    python benchmarks/ray_data_throughput.py [--cpus 1] [--images 64] [--batch 64] [--steps 16] [--rounds 3]

It joins the Ray cluster of --address or RAY_ADDRESS, else starts a local one (orchestration.cluster.connect).

--nodes N: the scaling of ray_data with CPU nodes. A cluster on this machine: a head that gives no CPU to the
input (the trainer's node) and N CPU-only nodes of 1 CPU each (orchestration.local_node), labelled
node-type=cpu and slot=<i>; rounds alternate between the input on node 0 only (cluster.data_labels {slot: 0}) and
on all N (cluster.data_labels {node-type: cpu}). Ray refuses several nodes in its single-machine mode, so this
head listens beyond loopback, with token auth on (orchestration/loopback.py).

    python benchmarks/ray_data_throughput.py --nodes 2 [--images 64] [--batch 64] [--steps 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks
from data_throughput import write_jpegs  # noqa: E402

from mupvit.config import Config, config_from_dict  # noqa: E402
from mupvit.data import train_loader  # noqa: E402
from mupvit.data.datasets import Split  # noqa: E402
from orchestration.cluster import connect  # noqa: E402
from orchestration.launch_config import ClusterConfig  # noqa: E402
from orchestration.local_head import start_head, stop_head  # noqa: E402
from orchestration.local_node import start_node, stop_node  # noqa: E402
from orchestration.ports import free_port_block  # noqa: E402
from orchestration.ray_data_input import Placement, ray_data_batches  # noqa: E402

COORDINATOR = b"ray::SplitCoordinator"  # Ray Data's executor for one consumer (orchestration/ray_data_input.py)


def input_config(cpus: int, batch: int, steps: int, augment_on: str) -> Config:
    return config_from_dict({"data": {"dataset": "imagefolder", "root": "/unused", "num_workers": cpus,
                                      "augment_on": augment_on},
                             "train": {"total_steps": steps, "epochs": None, "batch_size": batch},
                             "optim": {"warmup_steps": 1}})


def coordinator_cpu_s() -> dict[int, float]:
    """{pid: CPU seconds so far} of this machine's Ray Data coordinator actors."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(COORDINATOR):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):  # it ended while being read
            continue
    return found


def timed(batches: Iterable, batch: int) -> tuple[float, float, float]:
    """(images/s, this process's CPU seconds per wall second, the coordinators') over every batch after the
    first."""
    it = iter(batches)
    next(it)
    wall0, cpu0, coord0, n = time.perf_counter(), time.process_time(), coordinator_cpu_s(), 0
    for _ in it:
        n += 1
    wall = time.perf_counter() - wall0
    coordinator = sum(cpu - coord0.get(pid, 0.0) for pid, cpu in coordinator_cpu_s().items())  # those alive now
    return batch * n / wall, (time.process_time() - cpu0) / wall, coordinator / wall


def rounds(sides: dict[str, Callable[[], Iterable]], batch: int, count: int) -> dict[str, dict[str, float]]:
    """Each side `count` times, alternating: {side: {images_per_s, trainer_cpu_frac, coordinator_cpu_frac}}
    (medians)."""
    seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    for r in range(count):
        for name, make in sides.items():
            rate, busy, coordinator = timed(make(), batch)
            seen[name].append((rate, busy, coordinator))
            print(f"round {r + 1}: {name} {rate:.0f} images/s, this process {busy:.0%} of a core, the coordinator "
                  f"{coordinator:.0%}", file=sys.stderr, flush=True)
    keys = ("images_per_s", "trainer_cpu_frac", "coordinator_cpu_frac")
    return {name: {k: statistics.median(v[i] for v in values) for i, k in enumerate(keys)}
            for name, values in seen.items()}


@contextmanager
def cpu_nodes(count: int) -> Iterator[None]:
    """A head of 0 CPUs and `count` nodes of 1 CPU, this process joined as their driver (see the docstring)."""
    head = start_head(num_cpus=0, num_gpus=0, ports=free_port_block(), loopback_only=False)
    nodes = []
    try:
        for i in range(count):
            print(f"starting CPU node {i + 1} of {count}", file=sys.stderr, flush=True)
            nodes.append(start_node(head, 1, free_port_block(), {"node-type": "cpu", "slot": str(i)}))
        os.environ.update(head.env())
        print(f"connecting: {connect(ClusterConfig(address=head.address))}", file=sys.stderr)
        yield
    finally:
        ray.shutdown()
        for node in nodes:
            stop_node(node)
        stop_head(head)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, default=1, help="cores for the input, on either side")
    parser.add_argument("--nodes", type=int, help="CPU-only nodes of 1 CPU: the input on 1 of them vs on all")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--augment-on", choices=["loader", "device"], default="device")
    parser.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tiny", action="store_true", help="one short round (the test suite's smoke run)")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.batch, args.steps, args.rounds = 8, 8, 4, 1
    if args.nodes is not None and args.nodes < 2:
        parser.error(f"--nodes {args.nodes}: at least 2 (the input on one node, then on all of them)")
    cfg = input_config(args.cpus, args.batch, args.steps, args.augment_on)
    with tempfile.TemporaryDirectory() as tmp:
        split = Split("train", ["0"], [(p, 0) for p in write_jpegs(Path(tmp), args.images)])

        def ray_data(placement: Placement) -> Callable[[], Iterable]:
            return lambda: ray_data_batches(cfg, split, 0, args.steps, placement=placement)

        if args.nodes is not None:
            with cpu_nodes(args.nodes):
                found = rounds({"1_node": ray_data(Placement(label={"slot": "0"})),
                                f"{args.nodes}_nodes": ray_data(Placement(label={"node-type": "cpu"}))},
                               args.batch, args.rounds)
            result = {"nodes": args.nodes, "batch": args.batch, "augment_on": args.augment_on,
                      **{f"{side}_{k}": v for side, figures in found.items() for k, v in figures.items()}}
            result["speedup"] = result[f"{args.nodes}_nodes_images_per_s"] / result["1_node_images_per_s"]
        else:
            print(f"connecting: {connect(ClusterConfig(address=args.address))}", file=sys.stderr)
            found = rounds({"local": lambda: train_loader(cfg, split, 0, args.steps),
                            "ray_data": ray_data(Placement(cpus=args.cpus))}, args.batch, args.rounds)
            ray.shutdown()
            result = {"cpus": args.cpus, "batch": args.batch, "augment_on": args.augment_on,
                      **{f"{side}_{k}": v for side, figures in found.items() for k, v in figures.items()}}
            result["ray_data_cost_over_local"] = result["local_images_per_s"] / result["ray_data_images_per_s"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
