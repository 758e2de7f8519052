"""Evaluation: softmax cross-entropy, top-1 and top-5 accuracy over a whole split."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, count
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        logits = logits.float()
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
