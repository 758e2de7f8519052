"""The device half of data.augment_on: device. The loader hands over uint8 crops with their plans
(mupvit/data/plan.py); here the flip, RandAugment and the [-1, 1] scale run on the whole batch, on whatever device
it is on, and give the per-image path's images bit for bit (tests/test_batched_augment.py).

Each RandAugment layer groups the samples by (op, negate) and runs that op once on the group through the very
functions of the per-image path (mupvit/data/randaugment.py takes batches): a geometric op's sign picks one of its
two cached transforms, Cutout gets each sample's centre. The plans stay on the host, where the loader made them, so
grouping never waits for the device: only the group index tensors travel.
"""

from __future__ import annotations

import torch

from mupvit.data.plan import unpack_plans
from mupvit.data.randaugment import OPS, RandAugment
from mupvit.data.transforms import to_unit_range


def _groups(keys: list[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Sample indices by key, in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def _on(device: torch.device, members: list[int]) -> torch.Tensor:
    return torch.tensor(members).to(device, non_blocking=True)


def apply_plans(images: torch.Tensor, plans: torch.Tensor, randaugment: RandAugment | None) -> torch.Tensor:
    """Flip and RandAugment of a uint8 (B, 3, H, W) batch as its (B, plan length) plans say; uint8 out, the input
    left alone. `randaugment` (None: off) gives the layer count, magnitude and Contrast mode the plans were drawn
    for."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 (B, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    num_layers = randaugment.num_layers if randaugment is not None else 0
    p = unpack_plans(plans, num_layers, images.shape[-2], images.shape[-1])
    if len(p.flip) != len(images):
        raise ValueError(f"augmentation plans: {len(p.flip)} plans for a batch of {len(images)} images")
    out = images.clone(memory_format=torch.contiguous_format)
    if flipped := p.flip.nonzero().flatten().tolist():
        index = _on(images.device, flipped)
        out.index_copy_(0, index, out.index_select(0, index).flip(-1))  # TF.horizontal_flip
    for layer in range(num_layers):
        keys = list(zip(p.op[:, layer].tolist(), p.negate[:, layer].tolist(), strict=True))
        for (op, negate), members in _groups(keys).items():
            index = _on(images.device, members)
            centres = list(zip(p.cy[members, layer].tolist(), p.cx[members, layer].tolist(), strict=True))
            group = randaugment.apply_drawn_op(OPS[op], out.index_select(0, index), bool(negate), centres)
            out.index_copy_(0, index, group)
    return out


def augment_batch(images: torch.Tensor, plans: torch.Tensor, randaugment: RandAugment | None) -> torch.Tensor:
    """`apply_plans`, then big_vision's [-1, 1] scale: the float batch the loader path would have produced."""
    return to_unit_range(apply_plans(images, plans, randaugment))
