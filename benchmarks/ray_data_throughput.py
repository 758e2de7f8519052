"""Input-only images/s of the train stream on the same number of cores: the local loader (DataLoader with `--cpus`
workers) against data.pipeline ray_data (Ray Data tasks capped at `--cpus` CPUs, cluster.data_cpus), on
ImageNet-sized JPEGs (500x375, generated), alternating rounds, medians reported. Each side's batches are read in
this process as the trainer reads them (the device half left out: it is the same for both); the first batch of a
round (worker or task start-up) is not timed. Also the CPU this process spends per wall second while reading
(the trainer's own share of the input).

    python benchmarks/ray_data_throughput.py [--cpus 1] [--images 64] [--batch 64] [--steps 16] [--rounds 3]

It joins the Ray cluster of --address or RAY_ADDRESS, else starts a local one (orchestration.cluster.connect).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks
from data_throughput import write_jpegs  # noqa: E402

from mupvit.config import Config, config_from_dict  # noqa: E402
from mupvit.data import train_loader  # noqa: E402
from mupvit.data.datasets import Split  # noqa: E402
from orchestration.cluster import connect  # noqa: E402
from orchestration.launch_config import ClusterConfig  # noqa: E402
from orchestration.ray_data_input import Placement, ray_data_batches  # noqa: E402


def input_config(cpus: int, batch: int, steps: int, augment_on: str) -> Config:
    return config_from_dict({"data": {"dataset": "imagefolder", "root": "/unused", "num_workers": cpus,
                                      "augment_on": augment_on},
                             "train": {"total_steps": steps, "epochs": None, "batch_size": batch},
                             "optim": {"warmup_steps": 1}})


def timed(batches: Iterable, batch: int) -> tuple[float, float]:
    """(images/s, this process's CPU seconds per wall second) over every batch after the first."""
    it = iter(batches)
    next(it)
    wall0, cpu0, n = time.perf_counter(), time.process_time(), 0
    for _ in it:
        n += 1
    wall = time.perf_counter() - wall0
    return batch * n / wall, (time.process_time() - cpu0) / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, default=1, help="cores for the input, on either side")
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
    print(f"connecting: {connect(ClusterConfig(address=args.address))}", file=sys.stderr)
    cfg = input_config(args.cpus, args.batch, args.steps, args.augment_on)
    with tempfile.TemporaryDirectory() as tmp:
        split = Split("train", ["0"], [(p, 0) for p in write_jpegs(Path(tmp), args.images)])
        sides: dict[str, Callable[[], Iterable]] = {
            "local": lambda: train_loader(cfg, split, 0, args.steps),
            "ray_data": lambda: ray_data_batches(cfg, split, 0, args.steps, placement=Placement(cpus=args.cpus)),
        }
        rates: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, make in sides.items():
                rate, busy = timed(make(), args.batch)
                rates[name].append(rate)
                cpu[name].append(busy)
                print(f"round {r + 1}: {name} {rate:.0f} images/s, this process {busy:.0%} of a core",
                      file=sys.stderr)
    ray.shutdown()
    result = {"cpus": args.cpus, "batch": args.batch, "augment_on": args.augment_on,
              **{f"{name}_images_per_s": statistics.median(v) for name, v in rates.items()},
              **{f"{name}_trainer_cpu_frac": statistics.median(v) for name, v in cpu.items()}}
    result["ray_data_cost_over_local"] = result["local_images_per_s"] / result["ray_data_images_per_s"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
