"""The augmentation plan: every random number of one sample's flip and RandAugment, drawn by a loader worker (in
the per-image path's order, from the sample's own Generator) and applied later to the whole batch on the device
(mupvit/data/batched_augment.py), with data.augment_on: device.

A plan is an int32 vector of length 1 + 4 * layers:

    [flip, then per RandAugment layer: op, negate, cy, cx]

flip is 1 to mirror the image; op is the index into randaugment.OPS; negate is 1 where a geometric op's sign is
flipped; (cy, cx) is Cutout's centre (row, column). A slot that an op does not draw holds 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mupvit.data.randaugment import OPS

PER_LAYER = 4  # op, negate, cy, cx


def plan_length(num_layers: int) -> int:
    return 1 + PER_LAYER * num_layers


def pack_plan(flip: bool, layers: list[tuple[int, bool, tuple[int, int]]]) -> torch.Tensor:
    """One sample's plan from its flip and its RandAugment layers as RandAugment.draw gives them."""
    values = [int(flip)]
    for op, negate, (cy, cx) in layers:
        values += [op, int(negate), cy, cx]
    return torch.tensor(values, dtype=torch.int32)


@dataclass
class Plans:
    """A batch of plans, unpacked into host tensors: flip (B,) bool; op, negate, cy, cx (B, layers)."""

    flip: torch.Tensor
    op: torch.Tensor
    negate: torch.Tensor
    cy: torch.Tensor
    cx: torch.Tensor


def unpack_plans(plans: torch.Tensor, num_layers: int, height: int, width: int) -> Plans:
    """The (B, plan_length(num_layers)) plans of a batch of height x width images, checked: ValueError names the
    first thing that no loader could have drawn."""
    expected = plan_length(num_layers)
    if plans.ndim != 2 or plans.shape[1] != expected or plans.dtype.is_floating_point or plans.dtype == torch.bool:
        raise ValueError(f"augmentation plans: expected integer (B, {expected}) for {num_layers} RandAugment "
                         f"layer(s), got {plans.dtype} {tuple(plans.shape)}")
    plans = plans.cpu().long()
    layers = plans[:, 1:].reshape(len(plans), num_layers, PER_LAYER)
    unpacked = Plans(plans[:, 0] == 1, *(layers[..., k] for k in range(PER_LAYER)))
    checks = (("flip", plans[:, 0], 2), ("op index", unpacked.op, len(OPS)), ("negate", unpacked.negate, 2),
              ("cutout row", unpacked.cy, height), ("cutout column", unpacked.cx, width))
    for what, values, end in checks:
        bad = (values < 0) | (values >= end)
        if bad.any():
            raise ValueError(f"augmentation plans: {what} {int(values[bad][0])} outside 0..{end - 1}")
    return unpacked
