"""Data: up-front checks on disk layout, the deterministic stream, the transforms and the digits demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from mupvit.config import Config, DataConfig, config_from_dict, load_config
from mupvit.data import build_splits, eval_loader, train_loader
from mupvit.data.datasets import DataError, Split, load_split, load_splits
from mupvit.data.decode import decode_image
from mupvit.data.digits import build_digits
from mupvit.data.resize import to_uint8_truncating
from mupvit.data.stream import EvalDataset, StreamBatchSampler, StreamDataset, pass_order, sample_rng
from mupvit.data.transforms import EvalTransform, TrainTransform, random_resized_crop_box, to_unit_range

DEMO = Path(__file__).resolve().parent.parent / "experiments" / "demo_digits.yaml"


# ---------------------------------------------------------------- builders


def _write_tree(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (20, 24)) -> Path:
    """root/<split>/<class>/<i>.png; every image is a constant grey whose level encodes (class, index)."""
    for split, classes in layout.items():
        for c, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", size, (10 * c + i,) * 3).save(folder / f"{i:03d}.png")
    return root


def _folder_config(root: Path, *overrides: str) -> Config:
    """A tiny imagefolder config: 16x16 input, small model, batch 4, no flips, no RandAugment, no workers."""
    data = {
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 16, "eval_resize": 16,
                 "crop_area": [0.5, 1.0], "flip": False, "randaug_layers": 0, "num_workers": 0, "eval_batch_size": 8},
        "model": {"variant": None, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32, "patch_size": 4,
                  "num_classes": 3},
        "optim": {"warmup_steps": 0},
        "train": {"epochs": None, "total_steps": 10, "batch_size": 4, "eval_at_epochs": []},
    }
    return config_from_dict(data, list(overrides))


def _digits_config(digits_root: Path, *overrides: str) -> Config:
    return load_config(DEMO, [f"data.root={digits_root}", "train.batch_size=16", "data.num_workers=0", *overrides])


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels, *_ in loader]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (images_a, labels_a), (images_b, labels_b) in zip(a, b, strict=True):
        assert torch.equal(images_a, images_b)
        assert torch.equal(labels_a, labels_b)


# ---------------------------------------------------------------- errors name the path


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="data root not found") as info:
        load_split("imagefolder", missing, "train")
    assert str(missing) in str(info.value)


def test_missing_split_folder(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 1}})
    with pytest.raises(DataError, match="split folder not found") as info:
        load_splits("imagefolder", tmp_path, ["train", "val"])
    assert str(tmp_path / "val") in str(info.value)


def test_split_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders") as info:
        load_split("imagefolder", tmp_path, "train")
    assert str(tmp_path / "train") in str(info.value)


def test_empty_class_folder(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 2}})
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")  # non-image files do not count
    with pytest.raises(DataError, match="class folder has no images") as info:
        load_split("imagefolder", tmp_path, "train")
    assert str(tmp_path / "train" / "b") in str(info.value)


def test_class_sets_differ_between_splits(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "c": 1}})
    with pytest.raises(DataError, match="class folders differ") as info:
        load_splits("imagefolder", tmp_path, ["train", "val"])
    message = str(info.value)
    for fragment in (str(tmp_path / "train"), str(tmp_path / "val"), "only in train: ['b']", "only in val: ['c']"):
        assert fragment in message, message


def test_splits_list_samples_with_labels(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 2, "b": 3}, "val": {"a": 1, "b": 1}})
    splits = load_splits("imagefolder", tmp_path, ["train", "val", "val"])  # a repeated name loads once
    assert list(splits) == ["train", "val"]
    assert splits["train"].classes == ["a", "b"] and len(splits["train"]) == 5
    assert [label for _, label in splits["train"].samples] == [0, 0, 1, 1, 1]
    assert all(Path(path).is_absolute() for path, _ in splits["train"].samples)


@pytest.fixture
def corrupt_split(tmp_path) -> tuple[Split, Path]:
    _write_tree(tmp_path, {"train": {"a": 1}})
    bad = tmp_path / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg" * 8)
    split = load_split("imagefolder", tmp_path, "train")  # listing succeeds; decoding must fail loudly
    return split, bad


def test_corrupt_image_names_file_in_eval(corrupt_split):
    split, bad = corrupt_split
    dataset = EvalDataset(split, EvalTransform(16, 16))
    index = [path for path, _ in split.samples].index(str(bad))
    dataset[1 - index]  # the good image still decodes
    with pytest.raises(DataError, match="cannot decode image") as info:
        dataset[index]
    assert str(bad) in str(info.value)


def test_corrupt_image_names_file_in_stream(corrupt_split):
    split, bad = corrupt_split
    dataset = StreamDataset(split, TrainTransform(16, (0.5, 1.0), (0.75, 1.33)), seed=0)
    position = next(p for p in range(2) if split.samples[dataset.index_at(p)][0] == str(bad))
    with pytest.raises(DataError, match="cannot decode image") as info:
        dataset[position]
    assert str(bad) in str(info.value)


def test_skip_bad_fills_a_position_with_the_next_image_of_the_pass(corrupt_split):
    split, bad = corrupt_split
    transform = TrainTransform(16, (0.5, 1.0), (0.75, 1.33))
    dataset = StreamDataset(split, transform, seed=0, skip_bad=True)
    for position in range(6):  # three passes over the two files
        image, label, skipped, _, _ = dataset[position]
        good = split.samples[dataset.index_at(position)][0] != str(bad)
        assert skipped == (0 if good else 1)
        expected = transform(decode_image(next(p for p, _ in split.samples if p != str(bad))),
                             sample_rng(0, position))  # the good file, under this position's randomness
        assert torch.equal(image, expected)


def test_skip_bad_with_no_decodable_image_is_an_error(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 1}})
    for path in (tmp_path / "train" / "a").iterdir():
        path.write_bytes(b"junk")
    dataset = StreamDataset(load_split("imagefolder", tmp_path, "train"), transform=None, seed=0, skip_bad=True)
    with pytest.raises(DataError, match="no image of the 1 in split 'train' decodes"):
        dataset[0]


def test_truncated_jpeg_names_file(tmp_path):
    # A file that starts like a JPEG but is cut short is also reported, not decoded as garbage.
    _write_tree(tmp_path, {"val": {"a": 1}})
    good = tmp_path / "val" / "a" / "cut.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good, quality=90)
    good.write_bytes(good.read_bytes()[:40])
    split = load_split("imagefolder", tmp_path, "val")
    dataset = EvalDataset(split, EvalTransform(16, 16))
    index = [path for path, _ in split.samples].index(str(good))
    with pytest.raises(DataError, match="cannot decode image") as info:
        dataset[index]
    assert str(good) in str(info.value)


def test_build_splits_checks_num_classes(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    with pytest.raises(DataError) as info:
        build_splits(_folder_config(tmp_path))  # model.num_classes is 3, the data has 2
    message = str(info.value)
    assert str(tmp_path / "train") in message and "has 2 classes" in message
    assert "--set model.num_classes=2" in message


def test_build_splits_checks_num_train_examples(tmp_path):
    _write_tree(tmp_path, {"train": {"a": 2, "b": 2, "c": 1}, "val": {"a": 1, "b": 1, "c": 1}})
    with pytest.raises(DataError) as info:
        build_splits(_folder_config(tmp_path, "data.num_train_examples=7"))
    message = str(info.value)
    assert str(tmp_path / "train") in message and "has 5 images" in message
    assert "--set data.num_train_examples=5" in message
    # With the right count the splits load.
    splits = build_splits(_folder_config(tmp_path, "data.num_train_examples=5"))
    assert len(splits["train"]) == 5 and len(splits["val"]) == 3


def test_build_splits_digits(digits_root):
    splits = build_splits(_digits_config(digits_root))
    assert len(splits["train"]) == 1438 and len(splits["val"]) == 359
    # The demo trains on train minus its 5% stratified minival (7 of each class's ~144).
    assert len(splits["train_minus_minival"]) == 1368 and len(splits["minival"]) == 70
    assert splits["train"].classes == [str(d) for d in range(10)]
    with pytest.raises(DataError, match=r"--set model\.num_classes=10"):
        build_splits(_digits_config(digits_root, "model.num_classes=9"))
    with pytest.raises(DataError, match=r"--set data\.num_train_examples=1368"):
        build_splits(_digits_config(digits_root, "data.num_train_examples=1797"))


# ---------------------------------------------------------------- the training stream


@pytest.fixture(scope="module")
def digits_split(digits_root) -> Split:
    return build_splits(_digits_config(digits_root))["train"]


def test_stream_is_worker_independent(digits_root, digits_split):
    # Same batches, bit for bit, whether the stream is read in-process or by 2 worker processes.
    cfg0 = _digits_config(digits_root, "data.flip=true", "data.num_workers=0")
    cfg2 = _digits_config(digits_root, "data.flip=true", "data.num_workers=2")
    serial = _batches(train_loader(cfg0, digits_split, 0, 5))
    loader2 = train_loader(cfg2, digits_split, 0, 5)
    assert loader2.num_workers == 2
    parallel = _batches(loader2)
    _assert_same_batches(serial, parallel)
    assert serial[0][0].shape == (16, 3, 32, 32)
    assert not torch.equal(serial[0][0], serial[1][0])  # the steps are not all the same batch


def test_step_consumes_its_stream_positions(digits_root, digits_split):
    # Step s is exactly stream positions [s*B, (s+1)*B), whatever the loader machinery.
    cfg = _digits_config(digits_root, "data.flip=true")
    batch = cfg.train.batch_size
    batches = _batches(train_loader(cfg, digits_split, 0, 3))
    dataset = train_loader(cfg, digits_split, 0, 1).dataset
    for step in (0, 2):
        items = [dataset[p] for p in range(step * batch, (step + 1) * batch)]
        assert torch.equal(batches[step][0], torch.stack([item.image for item in items]))
        assert batches[step][1].tolist() == [item.label for item in items]


def test_resume_mid_stream(digits_root, digits_split):
    # A loader started at step k yields exactly the batches k.. of one started at 0.
    cfg = _digits_config(digits_root, "data.flip=true")
    full = _batches(train_loader(cfg, digits_split, 0, 6))
    resumed = _batches(train_loader(cfg, digits_split, 3, 6))
    _assert_same_batches(full[3:], resumed)


def test_rank_split_partitions_global_batch(digits_root, digits_split):
    # With world=2 each rank takes one half of the same global batch, in order, with no overlap.
    cfg = _digits_config(digits_root)
    whole = _batches(train_loader(cfg, digits_split, 2, 4))
    halves = [_batches(train_loader(cfg, digits_split, 2, 4, rank=r, world=2)) for r in (0, 1)]
    for step in range(2):
        assert halves[0][step][0].shape[0] == halves[1][step][0].shape[0] == 8
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), whole[step][0])
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), whole[step][1])


@pytest.mark.parametrize(("world", "batch"), [(1, 6), (2, 6), (3, 6), (4, 8)])
def test_batch_sampler_positions(world, batch):
    # Sampler level: rank r of W covers [s*B + r*B/W, s*B + (r+1)*B/W); together the ranks tile step s.
    samplers = [StreamBatchSampler(5, 9, batch, rank, world) for rank in range(world)]
    assert all(len(s) == 4 for s in samplers)
    per_rank = [list(s) for s in samplers]
    for i, step in enumerate(range(5, 9)):
        joined = [p for rank in range(world) for p in per_rank[rank][i]]
        assert joined == list(range(step * batch, (step + 1) * batch))
    assert list(StreamBatchSampler(3, 3, batch)) == [] and len(StreamBatchSampler(4, 3, batch)) == 0


@pytest.fixture
def unique_tree(tmp_path) -> Path:
    # 12 classes of one image each: a label identifies its sample, and the grey level identifies the image.
    classes = {f"c{k:02d}": 1 for k in range(12)}
    return _write_tree(tmp_path, {"train": classes, "val": classes})


def test_every_pass_is_a_permutation(unique_tree):
    # 9 steps of batch 4 over N=12 samples = 3 passes; each pass sees every sample once, in a new order.
    cfg = _folder_config(unique_tree, "model.num_classes=12")
    split = build_splits(cfg)["train"]
    batches = _batches(train_loader(cfg, split, 0, 9))
    labels = torch.cat([lab for _, lab in batches]).tolist()
    images = torch.cat([img for img, _ in batches])
    passes = [labels[i:i + 12] for i in range(0, 36, 12)]
    for order in passes:
        assert sorted(order) == list(range(12))
    assert len({tuple(p) for p in passes}) == 3
    # Each image is the sample its label names (constant grey 10*k survives crop and resize).
    expected = torch.tensor([10.0 * k / 127.5 - 1.0 for k in labels])
    torch.testing.assert_close(images.mean(dim=(1, 2, 3)), expected, atol=1e-5, rtol=0)


def test_pass_orders_over_many_passes():
    # Index level, with a fake split (no decoding): passes are permutations, orders differ between passes.
    n = 50
    split = Split("train", ["x"], [(f"/fake/{i}.png", 0) for i in range(n)])
    dataset = StreamDataset(split, transform=None, seed=0)
    indices = [dataset.index_at(p) for p in range(5 * n)]
    orders = [tuple(indices[i * n:(i + 1) * n]) for i in range(5)]
    for order in orders:
        assert sorted(order) == list(range(n))
    assert len(set(orders)) == 5
    # Reading positions out of order (as workers do) gives the same mapping.
    fresh = StreamDataset(split, transform=None, seed=0)
    for p in (3 * n + 7, 7, 4 * n - 1, n, 0):
        assert fresh.index_at(p) == indices[p]


def test_seed_changes_the_order():
    n = 100
    assert not np.array_equal(pass_order(0, 0, n), pass_order(1, 0, n))
    assert not np.array_equal(pass_order(0, 0, n), pass_order(0, 1, n))
    assert np.array_equal(pass_order(3, 2, n), pass_order(3, 2, n))


def test_seed_changes_the_batches(digits_root, digits_split):
    a = _batches(train_loader(_digits_config(digits_root, "train.seed=0"), digits_split, 0, 1))
    b = _batches(train_loader(_digits_config(digits_root, "train.seed=1"), digits_split, 0, 1))
    assert not torch.equal(a[0][1], b[0][1])


def test_eval_loader_covers_split_in_order(digits_root):
    cfg = _digits_config(digits_root)
    val = build_splits(cfg)["val"]
    labels = torch.cat([lab for _, lab in eval_loader(cfg, val)]).tolist()
    assert labels == [label for _, label in val.samples]


# ---------------------------------------------------------------- train transform


def _noise_image(height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_train_transform_shape_and_range():
    transform = TrainTransform(24, (0.05, 1.0), (0.75, 1.33))
    image = _noise_image()
    for seed in range(10):
        out = transform(image, np.random.default_rng(seed))
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
        assert out.min() >= -1.0 and out.max() <= 1.0


def test_train_transform_is_a_function_of_the_rng():
    transform = TrainTransform(24, (0.05, 1.0), (0.75, 1.33))
    image = _noise_image()
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    c = transform(image, np.random.default_rng(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _expected_crop(image, seed, size, area, aspect):
    """The crop a TrainTransform should take for `seed`, without the flip."""
    top, left, h, w = random_resized_crop_box(np.random.default_rng(seed), *image.shape[-2:], area, aspect)
    resized = TF.resized_crop(image.float(), top, left, h, w, [size, size], antialias=False)
    return to_unit_range(to_uint8_truncating(resized))


def test_train_crop_resize_is_bilinear_without_antialias_then_truncated_by_default():
    """big_vision decode_jpeg_and_inception_crop(224): tf.image.resize bilinear, antialias False, in float, then
    tf.cast back to uint8, which truncates (docs/RECIPE.md)."""
    assert DataConfig().antialias is False
    image = _noise_image(64, 48)
    crop = TrainTransform(16, (1.0, 1.0), (0.75, 0.75), crop="torchvision", flip=False)(image, np.random.default_rng(0))
    resized = TF.resize(image.float(), [16, 16], antialias=False)
    assert torch.equal(crop, to_unit_range(to_uint8_truncating(resized)))
    rounded = to_unit_range(TF.resize(image, [16, 16], antialias=False))  # torchvision on uint8 rounds
    assert ((rounded - crop) * 127.5).mean() > 0.3  # a rounding resize sits ~0.5 grey level above truncation
    assert not torch.equal(crop, to_unit_range(to_uint8_truncating(TF.resize(image.float(), [16, 16],
                                                                             antialias=True))))
    smooth = TrainTransform(16, (1.0, 1.0), (0.75, 0.75), crop="torchvision", flip=False, antialias=True)
    expected = to_unit_range(to_uint8_truncating(TF.resize(image.float(), [16, 16], antialias=True)))
    assert torch.equal(smooth(image, np.random.default_rng(0)), expected)


def test_no_flip_when_flip_is_off():
    image = _noise_image()
    transform = TrainTransform(24, (0.3, 1.0), (0.75, 1.33), crop="torchvision", flip=False)
    for seed in range(40):
        expected = _expected_crop(image, seed, 24, (0.3, 1.0), (0.75, 1.33))
        assert torch.equal(transform(image, np.random.default_rng(seed)), expected)


def test_flip_is_random_when_on():
    # Control for the test above: with flip on, outputs are the same crops, some of them mirrored.
    image = _noise_image()
    transform = TrainTransform(24, (0.3, 1.0), (0.75, 1.33), crop="torchvision", flip=True)
    flipped = []
    for seed in range(40):
        out = transform(image, np.random.default_rng(seed))
        crop = _expected_crop(image, seed, 24, (0.3, 1.0), (0.75, 1.33))
        assert torch.equal(out, crop) or torch.equal(out, TF.horizontal_flip(crop))
        flipped.append(not torch.equal(out, crop))
    assert 5 < sum(flipped) < 35


def _fallback_box(height, width, aspect):
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, round(width / aspect[0])
    elif ratio > aspect[1]:
        h, w = height, round(height * aspect[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 80), (300, 200), (17, 5), (224, 224)])
@pytest.mark.parametrize(("area", "aspect"), [((0.05, 1.0), (0.75, 1.33)), ((0.5, 1.0), (0.75, 1.33)),
                                              ((0.9, 1.0), (0.5, 2.0))])
def test_crop_box_in_range(height, width, area, aspect):
    total = height * width
    for seed in range(200):
        top, left, h, w = random_resized_crop_box(np.random.default_rng(seed), height, width, area, aspect)
        assert 0 < h and 0 < w and 0 <= top and 0 <= left and top + h <= height and left + w <= width
        if (top, left, h, w) == _fallback_box(height, width, aspect):
            continue
        # h and w are rounded from real values h', w' with area/aspect in range; allow exactly that rounding.
        assert (h - 0.5) * (w - 0.5) <= area[1] * total and (h + 0.5) * (w + 0.5) >= area[0] * total
        assert (w - 0.5) / (h + 0.5) <= aspect[1] and (w + 0.5) / (h - 0.5) >= aspect[0]


def test_crop_box_fallback_is_central_and_clamped():
    # No 90%-area crop fits a 4x100 strip at aspect <= 1.33: the centre crop with the widest allowed ratio.
    for seed in range(20):
        assert random_resized_crop_box(np.random.default_rng(seed), 4, 100, (0.9, 1.0), (0.75, 1.33)) == (0, 47, 4, 5)
        assert random_resized_crop_box(np.random.default_rng(seed), 100, 4, (0.9, 1.0), (0.75, 1.33)) == (47, 0, 5, 4)


def test_crop_box_full_area_is_whole_image():
    # area [1, 1] and aspect equal to the image's: the only crop is the image itself.
    assert random_resized_crop_box(np.random.default_rng(0), 30, 30, (1.0, 1.0), (1.0, 1.0)) == (0, 0, 30, 30)


# ---------------------------------------------------------------- eval transform


@pytest.mark.parametrize("value", [0, 51, 128, 255])
def test_eval_scaling_is_exact(value):
    # big_vision value_range(-1, 1): x / 127.5 - 1; constant images stay constant through resize and crop.
    out = EvalTransform(16, 20)(torch.full((3, 30, 45), value, dtype=torch.uint8))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, value / 127.5 - 1.0), atol=1e-7, rtol=0)
    if value in (0, 255):
        assert torch.equal(out, torch.full_like(out, -1.0 if value == 0 else 1.0))


def bars(height: int, width: int) -> torch.Tensor:
    """A white centre 40x40 with black bars on the long sides."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    if width > height:
        image[:, :, 20:60] = 255
    else:
        image[:, 20:60, :] = 255
    return image


@pytest.mark.parametrize(("height", "width"), [(40, 80), (80, 40)])
def test_eval_resizes_shorter_side_then_central_crop_tf_area(height, width):
    # TF area 40->32 (ratio 1.25) and the floored central crop 32 cover exactly input [20, 60): all white.
    out = EvalTransform(32, 32)(bars(height, width))
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, torch.ones(3, 32, 32))


@pytest.mark.parametrize(("height", "width"), [(40, 80), (80, 40)])
def test_eval_torchvision_bilinear_is_the_reproductions_resize(height, width):
    image = bars(height, width)
    out = EvalTransform(32, 32, "torchvision_bilinear")(image)
    resized = TF.resize(image, [32, 64] if width > height else [64, 32], antialias=True)
    assert torch.equal(out, to_unit_range(TF.center_crop(resized, [32, 32])))
    # Away from the crop edges (antialias blurs one pixel there) it is all centre, no bar.
    assert torch.equal(out[:, 2:30, 2:30], torch.ones(3, 28, 28))
    assert out.min() > 0.0


def test_eval_keeps_aspect_when_resizing():
    # 40x80 resized to shorter side 32 (-> 32x64) then cropped to 24: the crop is the centre of 32x64.
    image = _noise_image(40, 80)
    out = EvalTransform(24, 32, "torchvision_bilinear")(image)
    resized = TF.resize(image, [32, 64], antialias=True)
    assert torch.equal(out, to_unit_range(resized[:, 4:28, 20:44]))
    area = EvalTransform(24, 32)(image)
    assert area.shape == (3, 24, 24) and not torch.equal(area, out)


# ---------------------------------------------------------------- the digits demo


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_digits_layout_and_counts(digits_root):
    classes = [str(d) for d in range(10)]
    assert sorted(p.name for p in (digits_root / "train").iterdir()) == classes
    assert sorted(p.name for p in (digits_root / "val").iterdir()) == classes
    counts = {split: {c: len(list((digits_root / split / c).glob("*.jpg"))) for c in classes}
              for split in ("train", "val")}
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 1797
    assert {p.suffix for p in _files(digits_root) if p.name != "dataset.json"} == {".jpg"}
    for c in classes:
        n = counts["train"][c] + counts["val"][c]
        assert counts["train"][c] > 0 and counts["val"][c] > 0
        assert counts["val"][c] == round(0.2 * n)  # stratified: 20% of each class, not just overall
    meta = json.loads((digits_root / "dataset.json").read_text())
    assert meta["train"] == sum(counts["train"].values()) == 1438
    assert meta["val"] == sum(counts["val"].values()) == 359


def test_digits_images_decode(digits_root):
    split = load_split("imagefolder", digits_root, "val")
    image = EvalDataset(split, EvalTransform(32, 32))[0][0]
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert image.max() > image.min()  # a digit, not a blank


def test_digits_second_build_is_a_no_op(digits_root):
    before = {p: p.stat().st_mtime_ns for p in _files(digits_root)}
    assert build_digits(digits_root) == digits_root
    assert {p: p.stat().st_mtime_ns for p in _files(digits_root)} == before


def test_finding_the_digits_built_imports_no_scikit_learn(digits_root):
    """Every driver, data probe and worker calls build_digits; only a build needs scikit-learn (~1.3 s to import)."""
    code = ("import sys; from mupvit.data.digits import build_digits; build_digits(sys.argv[1]); "
            "print(sorted(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(digits_root)], capture_output=True, text=True, check=True)
    assert "sklearn" not in done.stdout and "'mupvit.data.digits'" in done.stdout


def test_digits_split_is_deterministic(digits_root, tmp_path):
    other = build_digits(tmp_path / "again")
    assert other != digits_root

    def names(root: Path, split: str) -> list[str]:
        return sorted(str(p.relative_to(root / split)) for p in (root / split).rglob("*.jpg"))

    assert names(other, "val") == names(digits_root, "val")
    assert names(other, "train") == names(digits_root, "train")
    assert not list(tmp_path.glob(".digits-*"))  # the temporary build folder is gone


def test_build_digits_refuses_a_folder_it_did_not_make(tmp_path):
    # A typo in data.root must never wipe the user's files.
    precious = tmp_path / "mydata" / "precious.txt"
    precious.parent.mkdir()
    precious.write_text("keep me")
    with pytest.raises(DataError, match="not a digits demo build"):
        build_digits(precious.parent)
    assert precious.read_text() == "keep me"
