"""µTransfer on the digits demo: does the best learning rate stay put as the ViT widens (µP) or drift (SP)?

Trains every (parametrization, width, log2 lr, seed) for a fixed number of steps through mupvit.train.run and
scores each run by its mean train loss over the last fifth of the steps. Writes results.csv, transfer.png (loss vs
log2 lr, a curve per width, SP and µP side by side, best lr marked) and prints the best lr per width.

    python benchmarks/mup_transfer.py --out runs/mup_transfer            # ~20 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mupvit.config import load_config
from mupvit.logger import RunLogger
from mupvit.models.parametrization import with_width
from mupvit.train import TrainingDiverged, run

# The probe of the µP issue: shallow, no weight decay, no MixUp (so the loss is the plain training loss).
DEFAULT_SETS = ["model.depth=2", "train.batch_size=128", "optim.weight_decay=0", "data.mixup_alpha=0",
                "train.eval_every=null", "evals={}", "train.eval_at_epochs=[]", "train.log_every=1",
                "train.ckpt_every=null", "train.epochs=null"]


class LossRecorder(RunLogger):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if "train/loss" in values:
            self.losses.append(values["train/loss"])


def final_loss(cfg, out_dir: Path) -> float:
    """Mean train loss over the last fifth of the run; inf when it diverged."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(out_dir)))
    recorder = LossRecorder()
    try:
        run(cfg, recorder)
    except TrainingDiverged:
        return math.inf
    tail = recorder.losses[-max(1, len(recorder.losses) // 5):]
    return sum(tail) / len(tail) if all(map(math.isfinite, tail)) else math.inf


def best_by_width(rows: list[dict]) -> dict[tuple[str, int], int]:
    """(parametrization, width) -> the log2 lr with the lowest seed-averaged final loss."""
    mean: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for r in rows:
        mean[r["parametrization"], r["width"], r["log2_lr"]].append(r["final_loss"])
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for (name, width, log2_lr), losses in mean.items():
        score = sum(losses) / len(losses)
        if (name, width) not in best or score < best[name, width][0]:
            best[name, width] = (score, log2_lr)
    return {key: lr for key, (_, lr) in best.items()}


def plot(rows: list[dict], best: dict[tuple[str, int], int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("sp", "mup") if any(r["parametrization"] == n for r in rows)]
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False, sharey=True)
    colors = plt.cm.plasma([0.15 + 0.7 * i / max(1, len(widths) - 1) for i in range(len(widths))])
    for ax, name in zip(axes[0], names, strict=True):
        for width, color in zip(widths, colors, strict=True):
            by_lr: dict[int, list[float]] = defaultdict(list)
            for r in rows:
                if (r["parametrization"], r["width"]) == (name, width):
                    by_lr[r["log2_lr"]].append(r["final_loss"])
            lrs = sorted(by_lr)
            losses = [sum(by_lr[x]) / len(by_lr[x]) for x in lrs]
            ax.plot(lrs, losses, marker="o", color=color, label=f"width {width}")
            b = best[name, width]
            ax.plot([b], [sum(by_lr[b]) / len(by_lr[b])], marker="*", markersize=16, color=color, markeredgecolor="k")
        ax.set_yscale("log")
        ax.set_title("µP" if name == "mup" else "SP (standard)")
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final train loss (mean of last 20% of steps)")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/demo_digits.yaml")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--log2-lrs", type=int, nargs="+", default=list(range(-11, -4)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=12)
    parser.add_argument("--parametrizations", nargs="+", default=["sp", "mup"], choices=["sp", "mup"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/mup_transfer")
    parser.add_argument("--tiny", action="store_true",
                        help="2 widths x 2 lrs x 1 seed of 3 steps (the test suite's smoke run)")
    args = parser.parse_args()
    if args.tiny:
        args.widths, args.log2_lrs, args.seeds, args.steps, args.warmup = [32, 64], [-9, -8], [0], 3, 1

    base = load_config(args.config, [*DEFAULT_SETS, f"train.total_steps={args.steps}",
                                     f"optim.warmup_steps={args.warmup}", f"model.base_width={args.base_width}",
                                     *args.overrides])
    grid = [(name, width, log2_lr, seed) for name in args.parametrizations for width in args.widths
            for log2_lr in args.log2_lrs for seed in args.seeds]
    configs = []
    for name, width, log2_lr, seed in grid:  # build (and so validate) every config before the first run
        model = dataclasses.replace(with_width(base.model, width), parametrization=name)
        configs.append(dataclasses.replace(
            base, model=model, optim=dataclasses.replace(base.optim, lr=2.0**log2_lr),
            train=dataclasses.replace(base.train, seed=seed)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    for i, ((name, width, log2_lr, seed), cfg) in enumerate(zip(grid, configs, strict=True), 1):
        with tempfile.TemporaryDirectory() as tmp:
            loss = final_loss(cfg, Path(tmp))
        rows.append({"parametrization": name, "width": width, "log2_lr": log2_lr, "seed": seed, "final_loss": loss})
        eta = (time.perf_counter() - t0) / i * (len(grid) - i)
        print(f"[{i}/{len(grid)}] {name} width {width} lr 2^{log2_lr} seed {seed}: loss {loss:.4f} "
              f"(eta {eta / 60:.1f} min)", file=sys.stderr, flush=True)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best = best_by_width(rows)
    plot(rows, best, out / "transfer.png")
    print(f"best log2 lr per width ({args.steps} steps, seeds {args.seeds}, base width {args.base_width}):")
    print(f"{'':6}" + "".join(f"{w:>8}" for w in args.widths) + "   shift (grid steps)")
    for name in args.parametrizations:
        lrs = [best[name, w] for w in args.widths]
        print(f"{name:6}" + "".join(f"{x:>8}" for x in lrs) + f"   {max(lrs) - min(lrs)}")
    print(f"wrote {out / 'results.csv'} and {out / 'transfer.png'} in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
