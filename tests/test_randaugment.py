"""big_vision RandAugment port: every op against an independent numpy version of the reference formula.

The numpy references below are written from big_vision/pp/autoaugment.py (and the tfa/TF kernels it calls) in
plain float64 / integer arithmetic. The port computes in float32 like TF, so colour ops are compared with a
tolerance of +-1 grey level (float32 vs float64 can straddle an integer before truncation), with at most 3% of
values off by one so that rounding instead of truncating would still be caught (see assert_close). Geometric ops must
match exactly except at pixels whose exact source coordinate lies on (within 1e-4 of) a nearest-neighbour rounding
tie, where float32 and float64 may legitimately round differently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TVF
from scipy import stats

from mupvit.data import randaugment as ra

# ----------------------------------------------------------------------------------------------------------------
# Calibration images (numpy, (3, H, W) uint8)


def _grey(plane: np.ndarray) -> np.ndarray:
    return np.repeat(plane[None].astype(np.uint8), 3, axis=0)


def checker(size: int = 32, cell: int = 4) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return _grey(np.where((y // cell + x // cell) % 2 == 0, 0, 255))


def hgrad(size: int = 33) -> np.ndarray:
    x = np.round(np.arange(size) * 255 / (size - 1))
    return _grey(np.tile(x, (size, 1)))


def vgrad(size: int = 33) -> np.ndarray:
    return hgrad(size).transpose(0, 2, 1).copy()


def colour_grad(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.stack([x * 255 // (size - 1), y * 255 // (size - 1), 255 - (x + y) * 255 // (2 * size - 2)]).astype(
        np.uint8)


def random_colour(seed: int, size: int = 32, lo: int = 0, hi: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, size=(3, size, size), dtype=np.uint8)


def random_grey(seed: int, size: int = 33) -> np.ndarray:
    return _grey(np.random.default_rng(seed).integers(0, 256, size=(size, size)))


IMAGES = {
    "checker": checker(),
    "hgrad": hgrad(),
    "vgrad": vgrad(),
    "colour_grad": colour_grad(),
    "random32": random_colour(0),
    "random33": random_colour(1, size=33),
    "lowcontrast": random_colour(2, lo=60, hi=181),
    "random_grey": random_grey(3),
}
MAGNITUDES = (0, 1, 3, 5, 7, 9, 10)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def n(x: torch.Tensor) -> np.ndarray:
    assert x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] == 3
    return x.numpy().astype(np.int64)


def assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    """Every value within +-1 grey level, and at most 3% of them off by one at all. The port, like TF, computes
    in float32 and truncates; the reference uses float64. The two only disagree where the exact value sits on an
    integer (e.g. 120 + 1.9 * -60 is 6.0 in float32 but 5.99999... in float64), which is rare; a port that rounded
    instead of truncating, or used another grayscale, would be off by one on 10-50% of values."""
    diff = np.abs(n(actual) - expected.astype(np.int64))
    assert diff.max() <= 1, f"max diff {diff.max()} at {np.argwhere(diff > 1)[:5].tolist()}"
    assert (diff > 0).mean() <= 0.03, f"{(diff > 0).mean():.2%} of values off by one"


# ----------------------------------------------------------------------------------------------------------------
# Independent numpy references of big_vision's formulas


def ref_blend(img1: np.ndarray, img2: np.ndarray, factor: float) -> np.ndarray:
    if factor == 0.0:
        return img1.astype(np.int64)
    if factor == 1.0:
        return img2.astype(np.int64)
    a, b = img1.astype(np.float64), img2.astype(np.float64)
    return np.floor(np.clip(a + factor * (b - a), 0, 255)).astype(np.int64)  # clip, then truncate


def ref_gray(img: np.ndarray) -> np.ndarray:
    """tf.image.rgb_to_grayscale: to [0, 1], luma weights, back to uint8 by *255.5 and truncation."""
    f = img.astype(np.float64) / 255.0
    return np.floor((0.2989 * f[0] + 0.5870 * f[1] + 0.1140 * f[2]) * 255.5).astype(np.int64)


def ref_autocontrast(img: np.ndarray) -> np.ndarray:
    out = img.astype(np.int64).copy()
    for c in range(3):
        lo, hi = float(img[c].min()), float(img[c].max())
        if hi > lo:
            out[c] = np.floor(np.clip((img[c] - lo) * 255.0 / (hi - lo), 0, 255))
    return out


def ref_equalize(img: np.ndarray) -> np.ndarray:
    """PIL ImageOps.equalize, which big_vision ports."""
    out = img.astype(np.int64).copy()
    for c in range(3):
        hist = np.bincount(img[c].ravel(), minlength=256)
        used = [int(h) for h in hist if h > 0]
        step = (sum(used) - used[-1]) // 255
        if step == 0:
            continue
        lut, acc = [], step // 2
        for i in range(256):
            lut.append(min(acc // step, 255))
            acc += int(hist[i])
        out[c] = np.array(lut)[img[c]]
    return out


def ref_posterize(img: np.ndarray, bits: int) -> np.ndarray:
    shift = 8 - bits
    return (img.astype(np.int64) >> shift) << shift


def ref_solarize(img: np.ndarray, threshold: int) -> np.ndarray:
    v = img.astype(np.int64)
    return np.where(v < threshold, v, 255 - v)


def ref_solarize_add(img: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    v = img.astype(np.int64)
    return np.where(v < threshold, np.clip(v + addition, 0, 255), v)


def ref_color(img: np.ndarray, factor: float) -> np.ndarray:
    return ref_blend(np.repeat(ref_gray(img)[None], 3, axis=0), img, factor)


def ref_contrast_bug(img: np.ndarray, factor: float) -> np.ndarray:
    """big_vision: sum of the 256-bin histogram / 256 = pixel count / 256, clipped and truncated."""
    grey = min(img.shape[1] * img.shape[2] / 256.0, 255.0)
    return ref_blend(np.full(img.shape, math.floor(grey)), img, factor)


def ref_contrast_fixed(img: np.ndarray, factor: float) -> np.ndarray:
    grey = math.floor(ref_gray(img).mean() + 0.5)  # PIL: int(mean + 0.5)
    return ref_blend(np.full(img.shape, grey), img, factor)


def ref_smoothed(img: np.ndarray) -> np.ndarray:
    v = img.astype(np.int64)
    kernel = [[1, 1, 1], [1, 5, 1], [1, 1, 1]]
    h, w = v.shape[1:]
    total = np.zeros((3, h - 2, w - 2), np.int64)
    for dy in range(3):
        for dx in range(3):
            total += kernel[dy][dx] * v[:, dy:dy + h - 2, dx:dx + w - 2]
    out = v.copy()
    out[:, 1:-1, 1:-1] = total // 13  # interior only; the border keeps the original pixels
    return out


def ref_sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    return ref_blend(ref_smoothed(img), img, factor)


def ref_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return ref_blend(np.zeros_like(img), img, factor)


def ref_warp(img: np.ndarray, source) -> tuple[np.ndarray, np.ndarray]:
    """Inverse mapping with nearest neighbour (round half away from zero, like std::round) and fill 128.
    `source(x, y)` gives the input coordinates each output pixel (x = column, y = row) reads. Also returns the
    pixels whose source coordinate is within 1e-4 of a rounding tie."""
    h, w = img.shape[1:]
    y, x = np.mgrid[:h, :w].astype(np.float64)
    sx, sy = source(x, y)
    rx = (np.sign(sx) * np.floor(np.abs(sx) + 0.5)).astype(np.int64)
    ry = (np.sign(sy) * np.floor(np.abs(sy) + 0.5)).astype(np.int64)
    inside = (rx >= 0) & (rx < w) & (ry >= 0) & (ry < h)
    out = np.full(img.shape, 128, np.int64)
    out[:, inside] = img[:, ry[inside], rx[inside]]
    near_tie = (np.abs(np.abs(sx - np.floor(sx)) - 0.5) < 1e-4) | (np.abs(np.abs(sy - np.floor(sy)) - 0.5) < 1e-4)
    return out, near_tie


def ref_rotate(img: np.ndarray, degrees: float):
    h, w = img.shape[1:]
    a = math.radians(degrees)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return ref_warp(img, lambda x, y: (cx + math.cos(a) * (x - cx) - math.sin(a) * (y - cy),
                                       cy + math.sin(a) * (x - cx) + math.cos(a) * (y - cy)))


def ref_shear_x(img, level):
    return ref_warp(img, lambda x, y: (x + level * y, y))


def ref_shear_y(img, level):
    return ref_warp(img, lambda x, y: (x, y + level * x))


def ref_translate_x(img, pixels):
    return ref_warp(img, lambda x, y: (x + pixels, y))


def ref_translate_y(img, pixels):
    return ref_warp(img, lambda x, y: (x, y + pixels))


def assert_warp_matches(actual: torch.Tensor, expected_and_ties: tuple[np.ndarray, np.ndarray]) -> None:
    expected, near_tie = expected_and_ties
    bad = (n(actual) != expected).any(axis=0)
    assert not (bad & ~near_tie).any(), f"{int((bad & ~near_tie).sum())} pixels differ away from rounding ties"
    assert bad.mean() <= 0.02, f"{bad.mean():.3%} of pixels differ at rounding ties"


# ----------------------------------------------------------------------------------------------------------------
# Per-op numerics


@pytest.mark.parametrize("name", list(IMAGES))
def test_autocontrast_equalize_invert(name):
    img = IMAGES[name]
    assert_close(ra.autocontrast(t(img)), ref_autocontrast(img))
    assert_close(ra.equalize(t(img)), ref_equalize(img))
    np.testing.assert_array_equal(n(ra.invert(t(img))), 255 - img.astype(np.int64))


def test_autocontrast_stretches_low_contrast_image_and_keeps_constant_channels():
    img = IMAGES["lowcontrast"].copy()
    img[2] = 77  # constant channel: left unchanged
    out = n(ra.autocontrast(t(img)))
    assert out[0].min() == 0 and out[0].max() >= 254 and out[1].min() == 0 and out[1].max() >= 254
    assert (out[2] == 77).all()


def test_equalize_flattens_histogram():
    img = IMAGES["lowcontrast"]
    out = n(ra.equalize(t(img)))
    assert out.min() <= 2 and out.max() >= 250
    np.testing.assert_array_equal(n(ra.equalize(t(checker()))), checker())  # two levels: step 0 -> unchanged


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", list(IMAGES))
def test_enhance_ops_match_reference(name, magnitude):
    img = IMAGES[name]
    rng = np.random.default_rng(0)
    factor = magnitude / 10 * 1.8 + 0.1
    assert_close(ra.apply_op("Color", t(img), magnitude, rng), ref_color(img, factor))
    assert_close(ra.apply_op("Brightness", t(img), magnitude, rng), ref_brightness(img, factor))
    assert_close(ra.apply_op("Sharpness", t(img), magnitude, rng), ref_sharpness(img, factor))
    assert_close(ra.apply_op("Contrast", t(img), magnitude, rng), ref_contrast_bug(img, factor))
    assert_close(ra.apply_op("Contrast", t(img), magnitude, rng, contrast_mode="fixed"),
                 ref_contrast_fixed(img, factor))


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", list(IMAGES))
def test_pixel_ops_match_reference(name, magnitude):
    img = IMAGES[name]
    rng = np.random.default_rng(0)
    bits, addition = int(magnitude / 10 * 4), int(magnitude / 10 * 110)
    # TF clamps shift amounts to 7, so 0 bits (magnitude < 2.5) keeps 1 bit.
    np.testing.assert_array_equal(n(ra.apply_op("Posterize", t(img), magnitude, rng)), ref_posterize(img, max(bits, 1)))
    np.testing.assert_array_equal(n(ra.apply_op("SolarizeAdd", t(img), magnitude, rng)),
                                  ref_solarize_add(img, addition))
    threshold = int(magnitude / 10 * 256)
    expected = ref_solarize(img, threshold if threshold < 256 else 0)  # 256 wraps to 0 as a uint8 constant
    np.testing.assert_array_equal(n(ra.apply_op("Solarize", t(img), magnitude, rng)), expected)


@pytest.mark.parametrize("threshold", [0, 1, 64, 128, 200, 255])
def test_solarize_thresholds(threshold):
    img = IMAGES["random32"]
    np.testing.assert_array_equal(n(ra.solarize(t(img), threshold)), ref_solarize(img, threshold))


def test_solarize_at_magnitude_10_is_invert():
    assert ra.level_to_arg("Solarize", 10, np.random.default_rng(0)) == (256,)
    for img in IMAGES.values():
        out = ra.apply_op("Solarize", t(img), 10, np.random.default_rng(0))
        np.testing.assert_array_equal(n(out), n(ra.invert(t(img))))
    # torchvision inverts only pixels >= threshold (at most 255), and its RandAugment uses 255 * (1 - 10/30) at
    # magnitude 10: neither inverts the image.
    img = t(IMAGES["random32"])
    for tv_threshold in (255.0, 170.0):
        assert not torch.equal(ra.solarize(img, 256), TVF.solarize(img, tv_threshold))


@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_bits(bits):
    img = IMAGES["random33"]
    np.testing.assert_array_equal(n(ra.posterize(t(img), bits)), ref_posterize(img, bits))


def test_solarize_add_only_touches_dark_pixels():
    img = IMAGES["hgrad"]
    out = n(ra.solarize_add(t(img), 110))
    dark = img < 128
    np.testing.assert_array_equal(out[~dark], img[~dark])
    np.testing.assert_array_equal(out[dark], np.minimum(img[dark].astype(np.int64) + 110, 255))


@pytest.mark.parametrize("magnitude", [1, 4, 7, 10])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("name", ["checker", "colour_grad", "random32", "random33", "hgrad"])
def test_geometric_ops_match_reference(name, magnitude, sign):
    img = IMAGES[name]
    m = magnitude / 10
    assert_warp_matches(ra.rotate(t(img), sign * m * 30), ref_rotate(img, sign * m * 30))
    assert_warp_matches(ra.shear_x(t(img), sign * m * 0.3), ref_shear_x(img, sign * m * 0.3))
    assert_warp_matches(ra.shear_y(t(img), sign * m * 0.3), ref_shear_y(img, sign * m * 0.3))
    # With 100 px the 32-px image is entirely fill; use 10 px too so content is checked.
    for pixels in (sign * m * 100, sign * m * 10, sign * 2.5):
        assert_warp_matches(ra.translate_x(t(img), pixels), ref_translate_x(img, pixels))
        assert_warp_matches(ra.translate_y(t(img), pixels), ref_translate_y(img, pixels))


def test_geometric_directions():
    img = np.zeros((3, 33, 33), np.uint8)
    img[:, 16, 26] = 255  # 10 px right of the centre (16, 16)
    out = n(ra.rotate(t(img), 90.0))
    # tfa.image.rotate: positive angle = counter-clockwise on screen, so right of centre goes above it.
    assert out[0, 6, 16] == 255 and (out[0] == 255).sum() == 1
    # Translate: positive pixels move the content left / up (output x reads input x + pixels).
    assert n(ra.translate_x(t(img), 5.0))[0, 16, 21] == 255
    assert n(ra.translate_y(t(img), 5.0))[0, 11, 26] == 255
    # ShearX about the top-left corner: row y reads input x + level*y -> content moves left by level*y.
    assert n(ra.shear_x(t(img), 0.25))[0, 16, 22] == 255
    # ShearY: column x reads input y + level*x -> content moves up by level*x (0.5 * 26 = 13 rows here).
    assert n(ra.shear_y(t(img), 0.5))[0, 3, 26] == 255
    # torchvision shifts content right for positive translate and shears about the centre.
    tv = TVF.affine(t(img), angle=0.0, translate=[5, 0], scale=1.0, shear=[0.0, 0.0], fill=128)
    assert not torch.equal(tv, ra.translate_x(t(img), 5.0))


def test_round_half_away_from_zero_at_ties():
    # A shift of exactly 2.5 px: std::round maps x + 2.5 to x + 3 (torch.round would map even x + 2.5 to x + 2).
    img = IMAGES["random32"]
    out = n(ra.translate_x(t(img), 2.5))
    np.testing.assert_array_equal(out[:, :, :29], img[:, :, 3:32].astype(np.int64))
    assert (out[:, :, 29:] == 128).all()
    # x - 2.5 rounds away from zero: x >= 3 reads x - 2 (0.5 -> 1), x = 2 reads -1 (-0.5 -> -1) and is fill, so
    # the two directions are not mirror images. torch.round would read column 0 at x = 2.
    out = n(ra.translate_x(t(img), -2.5))
    np.testing.assert_array_equal(out[:, :, 3:], img[:, :, 1:30].astype(np.int64))
    assert (out[:, :, :3] == 128).all()


def test_geometric_fill_is_exactly_128():
    img = np.full((3, 32, 32), 7, np.uint8)
    for op, arg in [(ra.rotate, 30.0), (ra.rotate, -30.0), (ra.shear_x, 0.3), (ra.shear_y, -0.3),
                    (ra.translate_x, 10.0), (ra.translate_y, -10.0)]:
        out = n(op(t(img), arg))
        assert set(np.unique(out).tolist()) == {7, 128}, op.__name__
        assert (out == 128).any(axis=(1, 2)).all()
        np.testing.assert_array_equal(out[0], out[2])
    # Translating by the full width leaves only fill.
    assert (n(ra.translate_x(t(img), 100.0)) == 128).all()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("magnitude", [0, 3, 10])
def test_cutout(seed, magnitude):
    img = IMAGES["random33"]
    h, w = img.shape[1:]
    out = n(ra.apply_op("Cutout", t(img), magnitude, np.random.default_rng(seed)))
    # The centre row then column are the first two draws of the generator.
    replay = np.random.default_rng(seed)
    cy, cx = int(replay.integers(0, h)), int(replay.integers(0, w))
    pad = int(magnitude / 10 * 40)
    expected = img.astype(np.int64).copy()
    expected[:, max(0, cy - pad):min(h, cy + pad), max(0, cx - pad):min(w, cx + pad)] = 128
    np.testing.assert_array_equal(out, expected)
    if magnitude == 0:
        np.testing.assert_array_equal(out, img)


def test_cutout_patch_size_and_fill():
    img = np.zeros((3, 200, 200), np.uint8)
    for seed in range(20):
        out = n(ra.cutout(t(img), 40, np.random.default_rng(seed)))
        filled = out[0] == 128
        rows, cols = np.flatnonzero(filled.any(axis=1)), np.flatnonzero(filled.any(axis=0))
        assert filled.sum() == len(rows) * len(cols) and len(rows) <= 80 and len(cols) <= 80
        assert set(np.unique(out).tolist()) == {0, 128}


# ----------------------------------------------------------------------------------------------------------------
# Contrast bug, sharpness direction, colourless inputs


def test_contrast_big_vision_bug_vs_fixed():
    img = random_colour(5, lo=180, hi=256)  # mean grey ~217, far from 32*32/256 = 4
    for factor in (0.5, 1.9):
        bug, fixed = ra.contrast(t(img), factor, "big_vision"), ra.contrast(t(img), factor, "fixed")
        assert_close(bug, ref_contrast_bug(img, factor))
        assert_close(fixed, ref_contrast_fixed(img, factor))
        assert np.abs(n(bug) - n(fixed)).mean() > 30
        # torchvision blends towards the true mean, like "fixed" and unlike big_vision.
        tv = n(TVF.adjust_contrast(t(img), factor))
        assert np.abs(tv - n(fixed)).max() <= 2 and np.abs(tv - n(bug)).mean() > 30
    # At factor 0.5 the bug is plain to see: (4 + v) / 2, truncated.
    out = n(ra.contrast(t(img), 0.5, "big_vision"))
    np.testing.assert_array_equal(out, (4 + img.astype(np.int64)) // 2)
    # The grey level is the pixel count / 256, whatever the content: 196 at 224x224.
    img224 = np.zeros((3, 224, 224), np.uint8)
    assert n(ra.contrast(t(img224), 0.1, "big_vision")).max() == math.floor(0.9 * 196)


def test_contrast_rejects_unknown_mode():
    with pytest.raises(ValueError):
        ra.contrast(t(IMAGES["checker"]), 1.5, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ra.RandAugment(contrast_mode="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("magnitude", [6, 7, 8, 9, 10])
@pytest.mark.parametrize("name", ["checker", "hgrad", "random32", "random_grey", "lowcontrast"])
def test_sharpness_sharpens_above_magnitude_5(name, magnitude):
    img = IMAGES[name]
    blurred = ref_smoothed(img)
    v = img.astype(np.int64)
    assert ra.level_to_arg("Sharpness", magnitude, np.random.default_rng(0))[0] > 1
    for seed in range(5):  # never negated: the same result for any draw
        out = n(ra.apply_op("Sharpness", t(img), magnitude, np.random.default_rng(seed)))
        # Away from the blurred image: out - img has the sign of img - blurred (or is 0, e.g. clipped at 0/255).
        assert ((out - v) * (v - blurred) >= 0).all()
        assert (out[v == blurred] == v[v == blurred]).all()
        if name in ("random32", "random_grey", "lowcontrast"):  # unsaturated detail: strictly sharper somewhere
            assert ((out - v) * (v - blurred) > 0).mean() > 0.3


def test_sharpness_factor_below_5_blurs_as_in_reference():
    # big_vision's factor M/10*1.8+0.1 is < 1 for M < 5 (blur) and exactly 1 at M = 5 (identity).
    img = IMAGES["checker"]
    assert ra.level_to_arg("Sharpness", 5, np.random.default_rng(0)) == (1.0,)
    np.testing.assert_array_equal(n(ra.apply_op("Sharpness", t(img), 5, np.random.default_rng(0))), img)
    out = n(ra.apply_op("Sharpness", t(img), 2, np.random.default_rng(0)))
    assert np.abs(out - ref_smoothed(img)).sum() < np.abs(img.astype(np.int64) - ref_smoothed(img)).sum()


@pytest.mark.parametrize("magnitude", [0, 3, 10])
@pytest.mark.parametrize("op", ra.OPS)
def test_colourless_input_stays_colourless(op, magnitude):
    for seed in range(3):
        img = random_grey(seed, size=32 + seed)
        for contrast_mode in ("big_vision", "fixed"):
            out = n(ra.apply_op(op, t(img), magnitude, np.random.default_rng(seed), contrast_mode=contrast_mode))
            np.testing.assert_array_equal(out[0], out[1])
            np.testing.assert_array_equal(out[0], out[2])


def test_grayscale_of_grey_is_identity():
    img = _grey(np.arange(256).reshape(16, 16))
    np.testing.assert_array_equal(ref_gray(img), img[0])
    np.testing.assert_array_equal(n(ra.color(t(img), 0.0)), img)


# ----------------------------------------------------------------------------------------------------------------
# Magnitudes, signs, and the RandAugment policy


def test_level_to_arg_values():
    rng = np.random.default_rng(0)
    for m in range(11):
        assert ra.level_to_arg("Posterize", m, rng) == (int(m / 10 * 4),)
        assert ra.level_to_arg("Solarize", m, rng) == (int(m / 10 * 256),)
        assert ra.level_to_arg("SolarizeAdd", m, rng) == (int(m / 10 * 110),)
        assert ra.level_to_arg("Cutout", m, rng) == (int(m / 10 * 40),)
        assert ra.level_to_arg("Cutout", m, rng, cutout_const=100) == (int(m / 10 * 100),)
        for op in ("AutoContrast", "Equalize", "Invert"):
            assert ra.level_to_arg(op, m, rng) == ()
        for op, scale in [("Rotate", 30.0), ("ShearX", 0.3), ("ShearY", 0.3), ("TranslateX", 100.0),
                          ("TranslateY", 100.0)]:
            (value,) = ra.level_to_arg(op, m, rng)
            assert abs(value) == pytest.approx(m / 10 * scale)
    (value,) = ra.level_to_arg("TranslateX", 10, rng, translate_const=250)
    assert abs(value) == 250.0
    with pytest.raises(ValueError):
        ra.level_to_arg("Identity", 10, rng)


@pytest.mark.parametrize("op", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhance_factors_are_never_negated(op):
    rng = np.random.default_rng(0)
    for m in range(11):
        factors = {ra.level_to_arg(op, m, rng)[0] for _ in range(200)}
        assert factors == {m / 10 * 1.8 + 0.1}
    assert ra.level_to_arg(op, 10, rng) == (pytest.approx(1.9),)


@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"])
def test_signed_ops_flip_sign_half_the_time(op):
    rng = np.random.default_rng(123)
    draws = 4000
    values = np.array([ra.level_to_arg(op, 10, rng)[0] for _ in range(draws)])
    negative = int((values < 0).sum())
    assert stats.binomtest(negative, draws, 0.5).pvalue > 1e-3
    assert len(np.unique(np.abs(values))) == 1


def test_op_set_is_big_vision_without_identity():
    assert ra.OPS == ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
                      "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
                      "Cutout", "SolarizeAdd")
    assert "Identity" not in ra.OPS


def test_ops_are_picked_uniformly():
    aug = ra.RandAugment()
    rng = np.random.default_rng(7)
    draws = 32000
    names = [aug.choose_op(rng) for _ in range(draws)]
    counts = np.array([names.count(op) for op in ra.OPS])
    assert counts.sum() == draws and (counts > 0).all()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_randaugment_applies_exactly_num_layers_ops(monkeypatch):
    img = t(IMAGES["random32"])
    for layers in (0, 1, 2, 3):
        aug = ra.RandAugment(num_layers=layers)
        applied: list[str] = []
        original = aug.apply_op

        def recording(name, image, rng, original=original, applied=applied):
            applied.append(name)
            return original(name, image, rng)

        monkeypatch.setattr(aug, "apply_op", recording)
        aug(img, np.random.default_rng(layers))
        assert len(applied) == layers and all(a in ra.OPS for a in applied)


@pytest.mark.parametrize("seed", range(20))
def test_randaugment_is_two_sequential_ops(seed):
    img = t(IMAGES["colour_grad"])
    out = ra.RandAugment(2, 10)(img, np.random.default_rng(seed))
    replay = np.random.default_rng(seed)
    expected = img
    for _ in range(2):
        name = ra.OPS[int(replay.integers(16))]
        expected = ra.apply_op(name, expected, 10, replay)
    assert torch.equal(out, expected)
    assert out.dtype == torch.uint8 and out.shape == img.shape


def test_randaugment_is_deterministic_per_seed_and_leaves_input_alone():
    img = t(IMAGES["random33"])
    before = img.clone()
    aug = ra.RandAugment(2, 10)
    outs = [aug(img, np.random.default_rng(s)) for s in range(30)]
    again = [aug(img, np.random.default_rng(s)) for s in range(30)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again, strict=True))
    # Translating 100 px wipes a 33 px image to 128, so some seeds coincide; most do not.
    assert len({o.numpy().tobytes() for o in outs}) > 15
    assert torch.equal(img, before)


def test_rejects_non_uint8_or_wrong_shape():
    with pytest.raises(ValueError):
        ra.invert(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError):
        ra.RandAugment()(torch.zeros(1, 8, 8, dtype=torch.uint8), np.random.default_rng(0))


def test_full_size_image_runs_every_op():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8))
    for op in ra.OPS:
        out = ra.apply_op(op, img, 10, np.random.default_rng(0))
        assert out.dtype == torch.uint8 and out.shape == img.shape
