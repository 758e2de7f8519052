"""Coordinate check (Tensor Programs V, Fig. 5): does each layer's activation size stay put as the model widens?

For every width and parametrization the model trains a few steps through the trainer's own `train_step` on the
config's data stream (constant lr: warmup off), and forward hooks record the mean |activation| of each layer type
in the forward pass after update t = 1..steps. Under µP every curve is flat in width; under SP the logits (and,
with Adam, the hidden layers' updates) grow with it.

    python -m mupvit.coord_check experiments/demo_digits.yaml --widths 64 128 256 512 --steps 5 --out runs/coord

writes coord.csv (parametrization, width, step, layer, l1), coord.png and prints the log-log slopes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

from mupvit.config import Config, ConfigError, add_set_argument, load_config, validate
from mupvit.coord_results import plot, slope_table, write_csv
from mupvit.data import DataError, build_splits, device_augment, train_loader
from mupvit.data.mixup import mixup_coefficient
from mupvit.models.build import build_model
from mupvit.models.parametrization import with_width
from mupvit.models.vit import ViT
from mupvit.optim import build_optimizer
from mupvit.train import train_step

CONSTANT_LR_STEPS = 10**9  # cosine horizon so long that the schedule stays at 1 for the few steps measured


class ActivationProbe:
    """Forward hooks that record the mean |activation| per layer type (averaged over blocks) while armed."""

    def __init__(self, model: ViT) -> None:
        self.armed, self.sums = False, defaultdict(list)
        targets = [("patch_embed", model.patch_embed, False)]
        for block in model.blocks:
            targets += [("attn_out", block.attn.out, False), ("mlp_out", block.mlp.fc2, False),
                        ("block_out", block, False)]
        targets += [("features", model.head, True), ("logits", model.head, False)]
        self.handles = []
        for layer, module, is_input in targets:
            if is_input:
                self.handles.append(module.register_forward_pre_hook(self._hook(layer, input_side=True)))
            else:
                self.handles.append(module.register_forward_hook(self._hook(layer, input_side=False)))

    def _hook(self, layer: str, input_side: bool):
        def record(module, inputs, output=None):
            if self.armed:
                tensor = inputs[0] if input_side else output
                self.sums[layer].append(tensor.detach().abs().mean().item())
        return record

    def take(self) -> dict[str, float]:
        """Per-layer means recorded since the last call."""
        out = {layer: sum(v) / len(v) for layer, v in self.sums.items()}
        self.sums.clear()
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def fixed_batches(cfg: Config, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `steps` batches of the config's training stream: the same data for every width."""
    splits = build_splits(cfg)
    loader = train_loader(cfg, splits[cfg.data.train_split], 0, steps)
    augment = device_augment(cfg)
    return [(augment(b.image, b.plan), b.label) for b in loader]


def measure(cfg: Config, batches: list, seed: int) -> Iterator[tuple[int, dict[str, float]]]:
    """Train on `batches` from a fresh model; yield (t, layer sizes) for the forward after t updates, t >= 1."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    optimizer = build_optimizer(model, dataclasses.replace(cfg.optim, warmup_steps=0), CONSTANT_LR_STEPS)
    probe = ActivationProbe(model)
    model.train()
    for step, (images, labels) in enumerate(batches):
        probe.armed = step >= 1
        train_step(model, optimizer, images, labels, step, cfg.train.accum_steps, cfg.optim.clip_norm, "fp32",
                   mixup_coefficient(cfg.train.seed, step, cfg.data.mixup_alpha))
        if step >= 1:
            yield step, probe.take()
    probe.remove()


def coord_check(cfg: Config, widths: list[int], steps: int, parametrizations: list[str], seeds: int = 1,
                log=print) -> list[dict]:
    """Rows {parametrization, width, step, layer, l1}, l1 averaged over `seeds` initialisations."""
    variants = {}
    for name in parametrizations:
        for width in widths:
            model_cfg = dataclasses.replace(with_width(cfg.model, width), parametrization=name)
            variant = dataclasses.replace(cfg, model=model_cfg)
            validate(variant)  # a width the widening rule cannot make fails here, before any training
            variants[name, width] = variant
    batches = fixed_batches(cfg, steps + 1)
    rows = []
    for (name, width), variant in variants.items():
        totals: dict[tuple[int, str], float] = defaultdict(float)
        for seed in range(seeds):
            for step, sizes in measure(variant, batches, cfg.train.seed + seed):
                for layer, value in sizes.items():
                    totals[step, layer] += value / seeds
        rows += [{"parametrization": name, "width": width, "step": step, "layer": layer, "l1": value}
                 for (step, layer), value in sorted(totals.items())]
        logits = totals[steps, "logits"]
        log(f"coord_check: {name} width {width}: logits l1 after {steps} steps {logits:.4g}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.coord_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML whose model is widened, e.g. experiments/demo_digits.yaml")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps to follow (default 5)")
    parser.add_argument("--parametrization", choices=["sp", "mup", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=2, help="initialisations averaged per point (default 2)")
    parser.add_argument("--out", default="runs/coord_check", help="folder for coord.csv and coord.png")
    add_set_argument(parser, "optim.lr=1e-2")
    args = parser.parse_args(argv)
    try:
        if len(set(args.widths)) < 2 or min(args.widths) <= 0:
            raise ConfigError(f"--widths: got {args.widths}, expected at least two different positive widths")
        if args.steps < 1 or args.seeds < 1:
            raise ConfigError("--steps and --seeds must be at least 1")
        cfg = load_config(args.config, args.overrides)
        names = ["sp", "mup"] if args.parametrization == "both" else [args.parametrization]
        rows = coord_check(cfg, sorted(set(args.widths)), args.steps, names, args.seeds,
                           log=lambda text: print(text, file=sys.stderr, flush=True))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "coord.csv")
    plot(rows, out / "coord.png")
    print(slope_table(rows))
    print(f"wrote {out / 'coord.csv'} and {out / 'coord.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
