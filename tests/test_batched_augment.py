"""data.augment_on: device. The loader crops and draws the plan; the device applies flip, RandAugment and the
[-1, 1] scale to the whole batch. Equivalence is the test: every op, the whole pipeline and whole training runs
give the per-image (loader) path's results bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mupvit.checkpoint import load_checkpoint
from mupvit.config import ConfigError, config_from_dict, load_config
from mupvit.coord_check import fixed_batches
from mupvit.data import build_splits, device_augment, train_loader
from mupvit.data import randaugment as ra
from mupvit.data.batched_augment import apply_plans, augment_batch
from mupvit.data.datasets import load_split
from mupvit.data.decode import decode_image
from mupvit.data.plan import pack_plan, plan_length
from mupvit.data.stream import StreamDataset, sample_rng
from mupvit.data.transforms import TrainTransform, to_unit_range
from mupvit.train import main, run

from .helpers import QuietLogger, tiny_config

DEMO = Path(__file__).resolve().parent.parent / "experiments" / "demo_digits.yaml"


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


def _digits(digits_root: Path, seed: int, *overrides: str):
    base = [f"data.root={digits_root}", "train.batch_size=16", "data.num_workers=0", "data.flip=true",
            f"train.seed={seed}", *overrides]
    return load_config(DEMO, base), load_config(DEMO, [*base, "data.augment_on=device"])


@pytest.mark.parametrize("overrides", [
    ("data.randaug_layers=2", "data.randaug_magnitude=10"),
    ("data.randaug_layers=2", "data.randaug_magnitude=10", "data.randaug_contrast=fixed"),
    ("data.randaug_layers=0",),
])
def test_device_path_gives_the_loader_path_images(digits_root, overrides):
    # 3 seeds x 64 stream positions each, the last seed's crossing from the first pass into the second.
    split = None
    for seed in (0, 1, 2):
        loader_cfg, device_cfg = _digits(digits_root, seed, *overrides)
        split = split or build_splits(loader_cfg)[loader_cfg.data.train_split]
        start = 40 * seed
        expected = list(train_loader(loader_cfg, split, start, start + 4))
        got = list(train_loader(device_cfg, split, start, start + 4))
        augment = device_augment(device_cfg)
        for loaded, cropped in zip(expected, got, strict=True):
            assert loaded.plan.shape == (16, 0)  # loader mode carries no plan
            assert cropped.image.dtype == torch.uint8
            assert cropped.plan.shape == (16, plan_length(device_cfg.data.randaug_layers))
            assert torch.equal(augment(cropped.image, cropped.plan), loaded.image)
            assert torch.equal(cropped.label, loaded.label)


def test_coordinate_check_batches_alike_in_both_modes(digits_root):
    loader_cfg, device_cfg = _digits(digits_root, 0, "data.randaug_layers=2")
    for (a, labels_a), (b, labels_b) in zip(fixed_batches(loader_cfg, 2), fixed_batches(device_cfg, 2), strict=True):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b) and torch.equal(labels_a, labels_b)


def test_loader_mode_passes_batches_through(digits_root):
    loader_cfg, _ = _digits(digits_root, 0)
    images = torch.rand(2, 3, 4, 4)
    assert device_augment(loader_cfg)(images, torch.empty(2, 0, dtype=torch.int32)) is images


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


def _final_model(summary: dict) -> dict[str, torch.Tensor]:
    return load_checkpoint(summary["checkpoint"])["model"]


def _assert_same_models(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


DEVICE_RUN = {"data.flip": True, "data.augment_on": "device"}  # tiny_config keeps RandAugment(2, 10)


@pytest.fixture(scope="module")
def device_run(digits_root, tmp_path_factory) -> dict:
    return run(tiny_config(digits_root, tmp_path_factory.mktemp("device"), **DEVICE_RUN), QuietLogger())


def test_training_is_identical_in_both_modes(digits_root, tmp_path, device_run):
    loader = run(tiny_config(digits_root, tmp_path, **{**DEVICE_RUN, "data.augment_on": "loader"}), QuietLogger())
    assert loader["steps"] == device_run["steps"] == 8
    _assert_same_models(_final_model(loader), _final_model(device_run))
    assert loader["val"] == device_run["val"]


def test_device_mode_resumes_exactly(digits_root, tmp_path, device_run):
    cfg = tiny_config(digits_root, tmp_path, **DEVICE_RUN)
    assert run(cfg, QuietLogger(), stop_at_step=4)["steps"] == 4
    resumed = run(cfg, QuietLogger())
    assert resumed["finished"] and resumed["steps"] == 8
    _assert_same_models(_final_model(resumed), _final_model(device_run))


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


def test_per_image_draws_refuse_a_batch():
    # One Generator draws for one image; a batch's draws come as plans.
    for call in (lambda b: ra.RandAugment(2, 10)(b, np.random.default_rng(0)),
                 lambda b: ra.apply_op("Rotate", b, 10, np.random.default_rng(0)),
                 lambda b: ra.cutout(b, 40, np.random.default_rng(0))):
        with pytest.raises(ValueError, match=r"expected one uint8 \(3, H, W\) image, got a batch \(2, 3, 16, 16\)"):
            call(_batch())


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


def test_augment_on_is_validated(capsys):
    with pytest.raises(ConfigError, match=r"data\.augment_on: got 'gpu', expected one of 'loader', 'device'"):
        config_from_dict({"data": {"augment_on": "gpu"}})
    assert main([str(DEMO), "--set", "data.augment_on=gpu"]) == 2
    assert "one of 'loader', 'device'" in capsys.readouterr().err
