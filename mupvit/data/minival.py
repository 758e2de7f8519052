"""Stratified held-out splits. big_vision holds out the first 1% of ImageNet train as "minival", but
torchvision's ImageNet is ordered by class, so a tail slice would hold out whole classes; here every
class gives round(fraction * count) images (at least one), chosen by a seed."""

from __future__ import annotations

import numpy as np

from mupvit.config import MINIVAL, TRAIN_MINUS_MINIVAL
from mupvit.data.datasets import Split


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out samples: max(1, round(fraction * count)) of each class, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        held[rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False)] = True
    return held


def split_minival(source: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train_minus_minival, minival) of `source`; disjoint, together exactly `source`."""
    held = stratified_holdout(np.array([label for _, label in source.samples]), fraction, seed)
    keep = [s for s, h in zip(source.samples, held, strict=True) if not h]
    out = [s for s, h in zip(source.samples, held, strict=True) if h]
    return Split(TRAIN_MINUS_MINIVAL, source.classes, keep), Split(MINIVAL, source.classes, out)
