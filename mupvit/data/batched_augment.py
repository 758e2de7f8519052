"""The device half of data.augment_on: device. The loader hands over uint8 crops with their plans
(mupvit/data/plan.py); here the flip, RandAugment and the [-1, 1] scale run on the whole batch, on whatever device
it is on, and give the per-image path's images bit for bit (tests/test_batched_augment.py).

Each RandAugment layer groups the samples by (op, negate) and runs that op once on the group through the very
functions of the per-image path (mupvit/data/randaugment.py takes batches): a geometric op's sign picks one of its
two cached transforms, Cutout gets each sample's centre. The plans stay on the host, where the loader made them, so
grouping never waits for the device: only the group index tensors travel.
"""

from __future__ import annotations

from collections.abc import Iterator

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


# Images per op call on the CPU: the float temporaries of a few 224 px images stay in cache, a whole group's do not
# (measured in docs/PERFORMANCE.md). An accelerator takes each group in one call.
CPU_CHUNK = 4


def _chunks(out: torch.Tensor, members: list[int]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(part, its index on the device, out[part]) for the members, CPU_CHUNK images at a time on the CPU."""
    b, _, h, w = out.shape
    step = CPU_CHUNK if out.device.type == "cpu" else len(members)
    for start in range(0, len(members), step):
        part = members[start:start + step]
        index = torch.tensor(part).to(out.device, non_blocking=True)
        # index_select on (B, 3*H*W) rows is a memcpy per image; on (B, 3, H, W) it is ~6x slower
        yield part, index, out.view(b, -1).index_select(0, index).view(len(part), 3, h, w)


def _put(out: torch.Tensor, part: list[int], index: torch.Tensor, result: torch.Tensor) -> None:
    """out[part] = result. On the CPU a copy per image: index_copy_ there is ~20x slower."""
    if out.device.type == "cpu":
        for image, m in zip(result, part, strict=True):
            out[m].copy_(image)
    else:
        out.index_copy_(0, index, result)


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
    for part, index, group in _chunks(out, p.flip.nonzero().flatten().tolist()):
        _put(out, part, index, group.flip(-1))  # TF.horizontal_flip
    for layer in range(num_layers):
        cy, cx = p.cy[:, layer].tolist(), p.cx[:, layer].tolist()
        keys = list(zip(p.op[:, layer].tolist(), p.negate[:, layer].tolist(), strict=True))
        for (op, negate), members in _groups(keys).items():
            for part, index, group in _chunks(out, members):
                centres = [(cy[m], cx[m]) for m in part]
                _put(out, part, index, randaugment.apply_drawn_op(OPS[op], group, bool(negate), centres))
    return out


def augment_batch(images: torch.Tensor, plans: torch.Tensor, randaugment: RandAugment | None) -> torch.Tensor:
    """`apply_plans`, then big_vision's [-1, 1] scale: the float batch the loader path would have produced."""
    return to_unit_range(apply_plans(images, plans, randaugment))
