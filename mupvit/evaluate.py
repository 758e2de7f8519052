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
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mupvit.config import ConfigError, add_set_argument, load_config
from mupvit.data import DataError, build_splits, eval_loader, eval_sets
from mupvit.data.datasets import worker_message
from mupvit.device import resolve_device
from mupvit.models.build import build_model
from mupvit.models.weights import load_weights
from mupvit.outputs import check_output_file
from mupvit.results import add_summary_argument, describe_eval, emit_summary


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum()


def real_counts(logits: torch.Tensor, indices: torch.Tensor, real_labels: torch.Tensor) -> torch.Tensor:
    """ImageNet-ReaL counts of one batch, as float64 [correct, scored, seen]: an image is correct when its top-1
    class is in its label set (row indices[i] of `real_labels`, padded with -1), and scored only when that set is
    not empty, as big_vision's classification evaluator masks by labels.max(axis=1)."""
    sets = real_labels[indices]
    correct = (sets == logits.argmax(dim=-1, keepdim=True)).any(dim=-1).sum()  # a -1 pad never equals a class
    scored = (sets[:, 0] >= 0).sum()  # sets are left-aligned: the first entry is -1 only for an empty set
    return torch.stack([correct, scored, indices.new_tensor(len(indices))]).double()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, precision: str = "fp32",
             fixed_shape: bool = False, real_labels: torch.Tensor | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 over every batch. `fixed_shape` (for a torch.compile'd model) pads a smaller last batch
    to the first one's size and drops the padding's logits, so the model sees one input shape and compiles once.

    With `real_labels` (mupvit.data.real_labels.load_real_labels: the split's (N, K) label sets) the batches'
    labels must be sample indices (eval_loader(..., index_labels=True)), and the result is ImageNet-ReaL top-1:
    {"acc1": correct / images, "images": images}, `images` counting the images with a non-empty label set, the
    only ones scored. Sharded evaluation sums every rank's counts, as for the plain metrics."""
    was_training = model.training
    model.eval()
    sets = None if real_labels is None else real_labels.to(device)
    # loss sum, top-1, top-5, count; or for ReaL: correct, scored, seen
    totals = torch.zeros(4 if sets is None else 3, dtype=torch.float64, device=device)
    full = None
    for images, labels in batches:
        if sets is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(sets)):
            # caught here, on the loader's CPU tensor: on CUDA an index out of range is an opaque device assert
            raise ValueError(f"evaluate: labels {int(labels.min())}..{int(labels.max())} are not indices into the "
                             f"{len(sets)} ReaL label sets; build the loader with eval_loader(..., index_labels=True) "
                             "over the split the sets were loaded for")
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        full = full or len(labels)
        if fixed_shape and len(labels) < full:
            images = torch.cat([images, images.new_zeros((full - len(labels), *images.shape[1:]))])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        logits = logits[:len(labels)].float()
        if sets is not None:
            totals += real_counts(logits, labels, sets)
            continue
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            topk_correct(logits, labels, 1).double(),
            topk_correct(logits, labels, 5).double(),
            torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
        ])
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():  # each rank saw its shard of the split
        dist.all_reduce(totals)
    values = totals.tolist()
    if values[-1] == 0:
        raise ValueError("evaluate: the split yielded no batches")
    if sets is not None:
        correct, scored, _ = values
        if scored == 0:
            raise ValueError("evaluate: no image of the split has a ReaL label (every label set is empty)")
        return {"acc1": correct / scored, "images": int(scored)}
    loss, top1, top5, count = values
    return {"acc1": top1 / count, "acc5": top5 / count, "loss": loss / count}


def main(argv: list[str] | None = None) -> int:
    """python -m mupvit.evaluate CONFIG --checkpoint PATH: every evaluator of the config (`evals`) with the
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
        if args.summary_json:
            check_output_file(Path(args.summary_json).expanduser().resolve(), "--summary-json")
        if not cfg.evals:
            raise ConfigError("evals: empty; declare the evaluators to run, e.g. --set 'evals={val: {split: val}}'")
        device = resolve_device(cfg.train.device)
        model = build_model(cfg)
        layout = load_weights(model, cfg, args.checkpoint)
        sets = eval_sets(cfg, build_splits(cfg))
        model.to(device)
        summary: dict = {"checkpoint": args.checkpoint, "layout": layout}
        for name, e in sets.items():
            loader = eval_loader(cfg, e.split, device.type == "cuda", index_labels=e.real_labels is not None,
                                 evaluator=e.config)
            summary[name] = evaluate(model, loader, device, cfg.train.precision, real_labels=e.real_labels)
            print(f"{name}: {describe_eval(summary[name])}  ({len(e.split)} images)", file=sys.stderr)
    except (ConfigError, DataError) as err:
        print(f"error: {worker_message(err)}", file=sys.stderr)  # a bad image: its line, not the worker's traceback
        return 2
    emit_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
