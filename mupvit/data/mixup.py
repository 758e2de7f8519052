"""MixUp as big_vision does it: one coefficient per batch, a ~ Beta(alpha, alpha), a = max(a, 1 - a), images
and labels mixed with the batch rolled by one (big_vision rolls each device's batch). The coefficient is a function
of (seed, step), so a resumed run draws the same ones. A device holding several devices' shares (an elastic run
going on with fewer) rolls each share apart, so the pairs are those of the full device count."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mixup_coefficient(seed: int, step: int, alpha: float) -> float | None:
    """The mixing weight of `step`'s batch, or None when MixUp is off (alpha == 0)."""
    if alpha == 0:
        return None
    a = float(np.random.default_rng([seed, step, 0x313]).beta(alpha, alpha))
    return max(a, 1.0 - a)


def rolled_within(batch: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`batch` with each of its `groups` equal consecutive parts rolled by one along the batch dimension."""
    return batch.unflatten(0, (groups, -1)).roll(1, dims=1).flatten(0, 1)


def mix_images(images: torch.Tensor, a: float, groups: int = 1) -> torch.Tensor:
    return a * images + (1.0 - a) * rolled_within(images, groups)


def mixup_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, rolled: torch.Tensor, a: float) -> torch.Tensor:
    """a * CE(y) + (1 - a) * CE(roll(y)): softmax cross-entropy against the mixed one-hot target."""
    return a * F.cross_entropy(logits, labels) + (1.0 - a) * F.cross_entropy(logits, rolled)
