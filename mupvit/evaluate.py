"""Evaluation: softmax cross-entropy, top-1 and top-5 accuracy over a whole split; and the CLI that evaluates any
supported checkpoint with a config's eval pipeline:

    python -m mupvit.evaluate experiments/demo_digits.yaml --checkpoint runs/demo_digits/ckpt_000000428.pt
    python -m mupvit.evaluate experiments/vit_s16_i1k_90ep.yaml --set data.root=/data/imagenet \
        --checkpoint vit_s16_i1k_90ep.npz        # big_vision's published parameters
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mupvit.config import ConfigError, add_set_argument, load_config
from mupvit.data import DataError, build_splits, eval_loader
from mupvit.device import resolve_device
from mupvit.models.build import build_model
from mupvit.models.weights import load_weights
from mupvit.results import add_summary_argument, emit_summary


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, precision: str = "fp32",
             fixed_shape: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 over every batch. `fixed_shape` (for a torch.compile'd model) pads a smaller last batch
    to the first one's size and drops the padding's logits, so the model sees one input shape and compiles once."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, count
    full = None
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        full = full or len(labels)
        if fixed_shape and len(labels) < full:
            images = torch.cat([images, images.new_zeros((full - len(labels), *images.shape[1:]))])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        logits = logits[:len(labels)].float()
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            topk_correct(logits, labels, 1).double(),
            topk_correct(logits, labels, 5).double(),
            torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
        ])
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():  # each rank saw its shard of the split
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    if count == 0:
        raise ValueError("evaluate: the split yielded no batches")
    return {"acc1": top1 / count, "acc5": top5 / count, "loss": loss / count}


def main(argv: list[str] | None = None) -> int:
    """python -m mupvit.evaluate CONFIG --checkpoint PATH: the config's eval pipeline over its eval splits with the
    weights of PATH (a mupvit .pt, a big_vision .npz or a timm-layout .safetensors); top-1/top-5 per split, then
    the JSON summary line."""
    parser = argparse.ArgumentParser(prog="python -m mupvit.evaluate", description=main.__doc__)
    parser.add_argument("config", help="experiment YAML whose model, data and eval splits to use")
    parser.add_argument("--checkpoint", required=True, help="weights: .pt (mupvit), .npz (big_vision), .safetensors")
    add_set_argument(parser, "data.root=/data/imagenet")
    add_summary_argument(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if not cfg.data.eval_splits:
            raise ConfigError("data.eval_splits: empty; name the splits to evaluate, e.g. "
                              "--set 'data.eval_splits=[val]'")
        device = resolve_device(cfg.train.device)
        model = build_model(cfg)
        layout = load_weights(model, cfg, args.checkpoint)
        splits = build_splits(cfg)
        model.to(device)
        summary: dict = {"checkpoint": args.checkpoint, "layout": layout}
        for name in cfg.data.eval_splits:
            loader = eval_loader(cfg, splits[name], pin_memory=device.type == "cuda")
            summary[name] = evaluate(model, loader, device, cfg.train.precision)
            print(f"{name}: top-1 {100 * summary[name]['acc1']:.2f}%  top-5 {100 * summary[name]['acc5']:.2f}%  "
                  f"loss {summary[name]['loss']:.4f}  ({len(splits[name])} images)", file=sys.stderr)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    emit_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
