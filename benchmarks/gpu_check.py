"""The GPU check: one command on a machine with one GPU and ~16 cores (about 5 minutes, at most 8), one JSON line.

  train   ViT-S/16 training images/s on synthetic data, bf16 + torch.compile, ours and timm's model of the same
          shape taking the identical step (benchmarks/train_throughput.py), and the model FLOPs utilisation (FLOPs
          of one step counted by torch's FlopCounterMode, over the card's dense bf16 peak)
  input   the train input pipeline on generated 500x375 JPEGs through the DataLoader with N workers, in both
          data.augment_on modes (images/s of the loader alone); and data.pipeline ray_data on the same N cores (a
          local Ray: Ray Data tasks, data.augment_on device): images/s, the reading process's and Ray Data's
          coordinator's share of a core (benchmarks/ray_data_throughput.py)
  run     a short run of experiments/vit_s16_i1k_90ep.yaml (batch 1024) on the same generated JPEGs in both modes:
          images/s, the fraction of step time spent waiting for data, the peak GPU memory

    python benchmarks/gpu_check.py                  # on the GPU machine
    python benchmarks/gpu_check.py --tiny           # CPU, seconds: the test suite's smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when imported by a test
from data_throughput import loader_rate, write_jpegs  # noqa: E402
from ray_data_throughput import input_config, timed  # noqa: E402
from train_throughput import compare_train_steps  # noqa: E402

from mupvit.config import ModelConfig, load_config  # noqa: E402
from mupvit.data.datasets import Split  # noqa: E402
from mupvit.logger import RunLogger  # noqa: E402
from mupvit.models.vit import ViT  # noqa: E402
from mupvit.train import run  # noqa: E402
from orchestration.cluster import connect  # noqa: E402
from orchestration.launch_config import ClusterConfig  # noqa: E402
from orchestration.ray_data_input import Placement, ray_data_batches  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGENET = REPO / "experiments" / "vit_s16_i1k_90ep.yaml"
MODES = ("loader", "device")
# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), matched against torch's device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for card, peak in PEAK_BF16.items() if card in name), None)


def step_flops_per_image(cfg: ModelConfig, image: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one training image (matmuls and attention, as FlopCounterMode counts them)."""
    model = ViT(cfg, image).to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 3, image, image, device=device)).sum().backward()
    return counter.get_total_flops() / 2


class Intervals(RunLogger):
    """The run's logged train intervals."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if "train/images_per_s" in values:
            self.rows.append(values)


def write_image_folder(root: Path, classes: int, per_class: int) -> None:
    """train/ and val/ in the ImageFolder layout, `per_class` generated JPEGs per class in each."""
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c:04d}"
            folder.mkdir(parents=True)
            write_jpegs(folder, per_class)


def short_run(root: Path, out: Path, mode: str, overrides: list[str]) -> dict[str, float]:
    cfg = load_config(IMAGENET, [f"data.root={root}", "data.dataset=imagefolder", "data.num_train_examples=null",
                                 f"data.augment_on={mode}", f"train.out_dir={out / mode}", "train.epochs=null",
                                 "train.eval_at_epochs=[]", "train.resume=false", *overrides])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    logger = Intervals()
    start = time.perf_counter()
    summary = run(cfg, logger)
    steady = logger.rows[1:] or logger.rows  # the first interval holds compilation
    return {
        "steps": summary["steps"], "wall_s": time.perf_counter() - start,
        "images_per_s": statistics.median(r["train/images_per_s"] for r in steady),
        "data_time_frac": statistics.median(r["train/data_time_frac"] for r in steady),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "val_acc1": summary["val"]["acc1"],
    }


def ray_data_input(paths: list[str], cpus: int, batch: int, steps: int) -> dict[str, float]:
    """data.pipeline ray_data's input alone on a local Ray, its tasks capped at `cpus` CPUs (augment_on device: the
    device half is the loader's, measured above)."""
    import ray

    print(f"ray_data input: {connect(ClusterConfig())}", file=sys.stderr, flush=True)
    try:
        split = Split("train", ["0"], [(p, 0) for p in paths])
        batches = ray_data_batches(input_config(cpus, batch, steps + 1, "device"), split, 0, steps + 1,
                                   placement=Placement(cpus=cpus))
        rate, trainer, coordinator = timed(batches, batch)  # the first batch (task start-up) not timed
    finally:
        ray.shutdown()
    return {"ray_data_images_per_s": rate, "ray_data_trainer_cpu_frac": trainer,
            "ray_data_coordinator_cpu_frac": coordinator}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="DataLoader workers (default: the cores but one, which runs the trainer)")
    parser.add_argument("--steps", type=int, default=200, help="steps of each short run")
    parser.add_argument("--tiny", action="store_true", help="CPU, a 1-block ViT at 32x32, a few steps (smoke run)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        parser.error("no CUDA device: run it on the GPU machine, or with --tiny for the CPU smoke run")
    device = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        model = ModelConfig(variant=None, width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, num_classes=4)
        image, batch, classes, per_class, args.workers, args.steps = 32, 8, 4, 2, 0, 4
        synthetic = {"batch": 8, "steps": 1, "rounds": 1, "precision": "fp32", "compile": False}
        run_sets = ["model.variant=null", "model.width=32", "model.depth=1", "model.num_heads=2", "model.mlp_dim=64",
                    "model.patch_size=8", "data.image_size=32", "data.eval_resize=36", "train.batch_size=8",
                    "data.eval_batch_size=8", "train.precision=fp32", "train.compile=false", "train.log_every=2"]
    else:
        model = ModelConfig(variant="S/16", num_classes=1000)
        image, batch, classes, per_class = 224, 1024, 1000, 1
        synthetic = {"batch": 256, "steps": 10, "rounds": 3, "precision": "bf16", "compile": True}
        run_sets = ["train.log_every=20"]
    run_sets += [f"model.num_classes={classes}", f"data.num_workers={args.workers}", f"train.total_steps={args.steps}",
                 f"train.eval_every={args.steps}", f"optim.warmup_steps={max(1, args.steps // 2)}"]

    result: dict = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                    "cores": os.cpu_count(), "torch": torch.__version__, "workers": args.workers}
    train = compare_train_steps(model, image, device=device, **synthetic)
    flops = step_flops_per_image(model, image, device)
    peak = peak_flops(device)
    result["train"] = {**train, "step_gflops_per_image": flops / 1e9,
                       "mfu": train["mupvit_images_per_s"] * flops / peak if peak else None}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        write_image_folder(root, classes, per_class)
        paths = sorted(str(p) for p in (root / "train").rglob("*.jpg"))
        result["input"] = {f"{mode}_images_per_s": loader_rate(paths, args.workers, batch, 4, mode, device)
                           for mode in MODES}
        result["input"].update(ray_data_input(paths, max(1, args.workers), batch, 4))
        result["run"] = {mode: short_run(root, Path(tmp) / "runs", mode, run_sets) for mode in MODES}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
