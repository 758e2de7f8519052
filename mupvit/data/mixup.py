"""MixUp as big_vision does it: one coefficient per batch, a ~ Beta(alpha, alpha), a = max(a, 1 - a), images
and labels mixed with the batch rolled by one. The coefficient is a function of (seed, step), so a resumed
run draws the same ones."""

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


def mix_images(images: torch.Tensor, a: float) -> torch.Tensor:
    return a * images + (1.0 - a) * images.roll(1, dims=0)


def mixup_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, rolled: torch.Tensor, a: float) -> torch.Tensor:
    """a * CE(y) + (1 - a) * CE(roll(y)): softmax cross-entropy against the mixed one-hot target."""
    return a * F.cross_entropy(logits, labels) + (1.0 - a) * F.cross_entropy(logits, rolled)
