"""data.augment_on: device. The loader crops and draws the plan; the device applies flip, RandAugment and the
[-1, 1] scale to the whole batch. Equivalence is the test: every op, the whole pipeline and whole training runs
give the per-image (loader) path's results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mupvit.data import randaugment as ra
from mupvit.data.batched_augment import apply_plans, augment_batch
from mupvit.data.datasets import load_split
from mupvit.data.decode import decode_image
from mupvit.data.plan import pack_plan
from mupvit.data.stream import StreamDataset, sample_rng
from mupvit.data.transforms import TrainTransform, to_unit_range


class Scripted:
    """Stands in for the numpy Generator of a per-image op and hands out the given draws in order, so that a test
    chooses each sample's sign flip and Cutout centre."""

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)

    def integers(self, low: int, high: int) -> int:
        value = self.draws.pop(0)
        assert low <= value < high
        return value


def _images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random uint8 images over random grey ranges; image 0 constant and image 1 two-level, so that one batch holds
    images that Equalize and AutoContrast leave alone and images they change."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n):
        lo = int(torch.randint(0, 200, (), generator=g))
        hi = lo + 1 + int(torch.randint(0, 256 - lo, (), generator=g))
        images.append(torch.randint(lo, hi, (3, h, w), dtype=torch.uint8, generator=g))
    images[0][:] = 77
    if n > 1:
        images[1] = torch.where(images[1] > 128, 200, 10).to(torch.uint8)
    return torch.stack(images)


def _centre(j: int, h: int, w: int) -> tuple[int, int]:
    """Sample j's Cutout centre: on and next to the borders and corners first, then inside."""
    edges = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (1, w - 2), (h - 2, 1), (h // 2, 0), (0, w // 2)]
    return edges[j] if j < len(edges) else (j * 7 % h, j * 5 % w)


CASES = [(name, "big_vision") for name in ra.OPS] + [("Contrast", "fixed")]
SIZES = [(16, 16, 20), (17, 13, 20), (32, 32, 20), (224, 224, 3)]  # height, width, samples


@pytest.mark.parametrize(("name", "contrast_mode"), CASES)
def test_each_op_batched_equals_per_image(name, contrast_mode):
    k = ra.OPS.index(name)
    for h, w, n in SIZES:
        images = _images(n, h, w, seed=k)
        before = images.clone()
        for magnitude in (0, 3, 7, 10):
            expected, plans = [], []
            for j, image in enumerate(images):
                negate = name in ra.SIGNED_OPS and j % 2 == 1  # both signs in every batch
                centre = _centre(j, h, w) if name == "Cutout" else (0, 0)
                draws = ([0.25 if negate else 0.75] if name in ra.SIGNED_OPS else []) + (
                    list(centre) if name == "Cutout" else [])
                rng = Scripted(draws)
                expected.append(ra.apply_op(name, image, magnitude, rng, contrast_mode))  # type: ignore[arg-type]
                assert rng.draws == []  # the per-image op drew exactly what the plan holds
                plans.append(pack_plan(False, [(k, negate, centre)]))
            out = apply_plans(images, torch.stack(plans), ra.RandAugment(1, magnitude, contrast_mode))
            assert torch.equal(out, torch.stack(expected)), (name, contrast_mode, h, w, magnitude)
        assert torch.equal(images, before)  # the input batch is left alone


def test_pipeline_at_224_on_random_images():
    # The whole per-image transform at full size vs crop_and_plan + the batched device half, flip and 2 layers.
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 300 + 17 * i, 400 - 23 * i), dtype=torch.uint8, generator=g) for i in range(4)]
    for contrast_mode in ("big_vision", "fixed"):
        aug = ra.RandAugment(2, 10, contrast_mode)
        transform = TrainTransform(224, (0.05, 1.0), (0.75, 1.33), randaugment=aug)
        positions = range(100, 100 + len(images))
        expected = torch.stack([transform(im, sample_rng(3, p)) for im, p in zip(images, positions, strict=True)])
        crops, plans = zip(*[transform.crop_and_plan(im, sample_rng(3, p))
                             for im, p in zip(images, positions, strict=True)], strict=True)
        assert torch.equal(augment_batch(torch.stack(crops), torch.stack(plans), aug), expected)


def test_skip_bad_keeps_the_positions_plan(tmp_path):
    # A bad file's position is filled by the next good one under the position's own draws, plan included.
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "good.png")
    (folder / "bad.jpg").write_bytes(b"not a jpeg" * 8)
    split = load_split("imagefolder", tmp_path, "train")
    transform = TrainTransform(16, (0.5, 1.0), (0.75, 1.33), randaugment=ra.RandAugment(2, 10))
    dataset = StreamDataset(split, transform.crop_and_plan, seed=0, skip_bad=True)
    good = decode_image(str(folder / "good.png"))
    skipped = []
    for position in range(6):
        sample = dataset[position]
        image, plan = transform.crop_and_plan(good, sample_rng(0, position))
        assert torch.equal(sample.image, image) and torch.equal(sample.plan, plan)
        skipped.append(sample.skipped)
    assert sorted(set(skipped)) == [0, 1]


def _batch(n: int = 2, size: int = 16) -> torch.Tensor:
    return _images(n, size, size, seed=0)


def _plan(flip: int = 0, op: int = 0, negate: int = 0, cy: int = 0, cx: int = 0) -> list[int]:
    return [flip, op, negate, cy, cx, 2, 0, 0, 0]  # layer 2 is Invert


@pytest.mark.parametrize(("plans", "message"), [
    (torch.zeros(2, 5, dtype=torch.int32), r"expected integer \(B, 9\) for 2 RandAugment layer\(s\), got .* \(2, 5\)"),
    (torch.zeros(2, 9), r"expected integer \(B, 9\)"),
    (torch.tensor([_plan(op=16), _plan()]), "op index 16 outside 0..15"),
    (torch.tensor([_plan(), _plan(op=-1)]), "op index -1 outside 0..15"),
    (torch.tensor([_plan(flip=2), _plan()]), "flip 2 outside 0..1"),
    (torch.tensor([_plan(negate=3), _plan()]), "negate 3 outside 0..1"),
    (torch.tensor([_plan(op=14, cy=16), _plan()]), "cutout row 16 outside 0..15"),
    (torch.tensor([_plan(op=14, cx=-2), _plan()]), "cutout column -2 outside 0..15"),
    (torch.tensor([_plan()] * 3), "3 plans for a batch of 2 images"),
])
def test_bad_plans_are_refused(plans, message):
    with pytest.raises(ValueError, match=message):
        apply_plans(_batch(), plans, ra.RandAugment(2, 10))


def test_bad_batches_are_refused():
    plans = torch.tensor([_plan(), _plan()])
    for images in (_batch().float(), _batch()[:, :1], _batch()[0]):
        with pytest.raises(ValueError, match="expected a uint8 .B, 3, H, W. batch"):
            apply_plans(images, plans, ra.RandAugment(2, 10))


def test_histograms_agree():
    # Equalize counts with bincount on the CPU and with scatter_add elsewhere: the same counts.
    rows = _images(4, 20, 30, seed=1).reshape(12, -1)
    assert torch.equal(ra._histograms_bincount(rows), ra._histograms_scatter(rows))


def test_divisions_are_alike_on_every_device():
    # CUDA divides by a Python number as a multiply by its float32 reciprocal. Sharpness's floors of sum / 13 do not
    # change under that for any sum it can make; the [-1, 1] scale would (so to_unit_range divides by a tensor).
    sums = torch.arange(13 * 255 + 1, dtype=torch.float32)
    assert torch.equal((sums / 13.0).floor(), (sums * torch.tensor(1 / 13, dtype=torch.float32)).floor())
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_unit_range(levels), levels.float() / 127.5 - 1.0)
    assert not torch.equal(levels.float() / 127.5, levels.float() * torch.tensor(1 / 127.5, dtype=torch.float32))
