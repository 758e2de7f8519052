"""TF-semantics Inception crop (tf.image.sample_distorted_bounding_box as big_vision calls it) against the
torchvision-style sampler: hard bounds, the kernel's exact rounding rules, and distribution tests that fail if the two
samplers were swapped. Every test is seeded, so the p-values below are fixed numbers, not flaky draws; the thresholds
leave orders of magnitude of margin on both sides (measured values in the comments)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mupvit.data.crop import _generate_random_crop, tf_inception_crop_box
from mupvit.data.transforms import random_resized_crop_box

AREA = (0.05, 1.0)
ASPECT = (0.75, 1.33)
N = 20_000  # draws per sampler in the distribution tests (~0.4 s each)
PASS_P = 1e-3  # a "consistent with the law" KS test must not reject at this (generous) level
REJECT_P = 1e-20  # a "wrong law" KS test must reject at least this strongly


def _boxes(sampler, seed: int, height: int, width: int, area: tuple[float, float], n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([sampler(rng, height, width, area, ASPECT) for _ in range(n)], dtype=np.int64)


@pytest.mark.parametrize(
    ("height", "width", "area"),
    [
        (256, 512, AREA),
        (512, 256, AREA),  # tall: the width clip on max height is active for every ratio
        (1000, 60, AREA),  # very tall
        (60, 1000, AREA),
        (375, 500, (0.08, 1.0)),
        (224, 224, (0.3, 0.6)),
        (5, 7, AREA),
        (3, 3, AREA),
        (4, 100, AREA),  # only a 4x5 crop fits; with attempts=1 the whole-image fallback is frequent
        (1, 4, (0.5, 1.0)),  # no crop can satisfy the area: always the whole image
        (1, 1, AREA),
    ],
)
@pytest.mark.parametrize("attempts", [100, 1])
def test_tf_crop_inside_image_and_within_bounds(height: int, width: int, area: tuple[float, float],
                                                attempts: int) -> None:
    rng = np.random.default_rng(height * 1000 + width + attempts)
    draws = 100 if (height, width) == (1, 4) else 1000  # (1, 4): every call runs all 100 attempts; keep it short
    whole = 0
    for _ in range(draws):
        top, left, h, w = tf_inception_crop_box(rng, height, width, area, ASPECT, attempts)
        assert 0 <= top and 0 <= left and 0 < h and 0 < w
        assert top + h <= height and left + w <= width
        if (top, left, h, w) == (0, 0, height, width):
            whole += 1
            continue
        # Offsets are Uniform(n) = [0, n): a crop smaller than the image never reaches its bottom/right edge.
        assert h == height or top + h < height
        assert w == width or left + w < width
        # Area in pixels within the range (the kernel compares in float32: allow 1e-6 relative).
        assert area[0] * height * width * (1 - 1e-6) <= h * w <= area[1] * height * width * (1 + 1e-6)
        # w = round(h * ratio) with ratio in ASPECT, so w / h may exceed the range by at most 0.5 / h.
        assert ASPECT[0] - 0.5 / h - 1e-6 <= w / h <= ASPECT[1] + 0.5 / h + 1e-6
    if (height, width, area) == (1, 4, (0.5, 1.0)):
        assert whole == draws
    if (height, width) == (4, 100) and attempts == 1:
        assert 500 < whole < 900  # one attempt succeeds ~35% of the time (measured fallback rate 65%)
    if (height, width) in ((256, 512), (512, 256), (375, 500)):
        assert whole == 0  # a crop always fits here; the fallback must never fire


def test_tf_fallback_is_whole_image_not_centre_crop() -> None:
    # No crop of >= 90% area fits the ratio range: TF returns the whole image, torchvision a clamped centre crop.
    for seed in range(20):
        assert tf_inception_crop_box(np.random.default_rng(seed), 4, 100, (0.9, 1.0), ASPECT) == (0, 0, 4, 100)
        assert tf_inception_crop_box(np.random.default_rng(seed), 100, 4, (0.9, 1.0), ASPECT) == (0, 0, 100, 4)
    assert random_resized_crop_box(np.random.default_rng(0), 4, 100, (0.9, 1.0), ASPECT) == (0, 47, 4, 5)


def test_tf_attempts_matter() -> None:
    # A 4x100 image only admits a 4x5 crop (ratio >= 1.125, ~35% of attempts); with 100 attempts (torchvision: 10)
    # the fallback practically never fires (0.65**100), unlike the single-attempt case in the bounds test.
    boxes = _boxes(tf_inception_crop_box, 0, 4, 100, AREA, n=2000)
    assert (boxes[:, 2:] == [4, 5]).all()


def test_tf_crop_is_deterministic_given_seed() -> None:
    def run(seed: int) -> list[tuple[int, int, int, int]]:
        rng = np.random.default_rng(seed)
        return [tf_inception_crop_box(rng, 256, 512, AREA, ASPECT) for _ in range(200)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert tf_inception_crop_box(np.random.default_rng(3), 333, 444, AREA, ASPECT) == tf_inception_crop_box(
        np.random.default_rng(3), 333, 444, AREA, ASPECT)


@pytest.mark.parametrize(
    ("area", "aspect", "attempts"),
    [((0.0, 1.0), ASPECT, 100), ((0.05, 1.5), ASPECT, 100), (AREA, (0.0, 1.33), 100), (AREA, ASPECT, 0)],
)
def test_tf_crop_rejects_invalid_arguments(area: tuple[float, float], aspect: tuple[float, float],
                                           attempts: int) -> None:
    with pytest.raises(ValueError):
        tf_inception_crop_box(np.random.default_rng(0), 256, 256, area, aspect, attempts)


def _heights_at_ratio(ratio: float, height: int, width: int, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = np.float32(height) * np.float32(width)
    lo, hi = np.float32(AREA[0]) * total, np.float32(AREA[1]) * total
    out = []
    for _ in range(n):
        box = _generate_random_crop(rng, height, width, lo, hi, np.float32(ratio))
        assert box is not None
        out.append(box[2:])
    return np.array(out)


def test_tf_height_is_uniform_integer_given_ratio() -> None:
    # 256x512, ratio 1: heights range over [round(sqrt(0.05 * 131072)), min(round(sqrt(131072)), 256)] = [81, 256]
    # and no rounding repair applies (81 * 81 >= 6553.6), so each of the 176 heights is equally likely.
    hw = _heights_at_ratio(1.0, 256, 512)
    assert (hw[:, 0] == hw[:, 1]).all()
    counts = np.bincount(hw[:, 0], minlength=257)
    assert counts[:81].sum() == 0 and counts[81:].min() > 0
    p = stats.chisquare(counts[81:]).pvalue  # measured 0.76
    assert p > PASS_P
    # Against the torchvision law (area uniform, so height density ~ h) the same counts are wildly off.
    h = np.arange(81, 257)
    p_tv = stats.chisquare(counts[81:], f_exp=h / h.sum() * counts.sum()).pvalue  # measured ~0
    assert p_tv < REJECT_P


def test_tf_rounding_repair_and_half_even() -> None:
    # ratio 0.75 on 256x512: min height round(sqrt(6553.6 / 0.75)) = 93 gives width round(69.75) = 70, area 6510 <
    # 6553.6, so the kernel bumps it to 94 with width lrintf(70.5) = 70 (half to even). 93 never appears and 94
    # carries the mass of two heights.
    hw = _heights_at_ratio(0.75, 256, 512)
    counts = np.bincount(hw[:, 0], minlength=257)
    assert counts[:94].sum() == 0
    assert (hw[hw[:, 0] == 94, 1] == 70).all()
    ratio_94 = counts[94] / counts[95:].mean()  # measured 1.84 (expected 2, ~115 counts per height)
    assert 1.6 < ratio_94 < 2.4


def test_tf_max_height_clipped_to_width() -> None:
    # Tall 512x256 image, ratio 1.33: the area bound would allow height 314, but round(h * 1.33) <= 256 caps it at
    # int((256 + 0.5 - 1e-7) / 1.33) = 192 (width 255).
    hw = _heights_at_ratio(1.33, 512, 256, n=4000)
    assert hw[:, 0].max() == 192 and hw[:, 1].max() == 255
    assert (hw[:, 1] <= 256).all()


def _area_statistics(boxes: np.ndarray, height: int, width: int, seed: int) -> dict[str, float]:
    """On 256x512 with area up to 1 both samplers are capped by the image height (h <= 256, so the area fraction is at
    most ratio / 2 <= 0.665), so neither area law is uniform on [0.05, 1]. The laws are told apart through the
    height, using the realised ratio w / h (off by <= 0.5 / h from the drawn one) and a uniform jitter to undo the
    integer rounding of h before a KS test:
      TF:          h uniform integer in [round(sqrt(0.05 * HW / r)), 256]    -> u_tf ~ U(0, 1)
      torchvision: area uniform in [0.05 * HW, 256.5**2 * r] (h = round(.)) -> u_tv ~ U(0, 1)."""
    total = height * width
    h = boxes[:, 2].astype(np.float64)
    w = boxes[:, 3].astype(np.float64)
    r = w / h
    jitter = np.random.default_rng([seed, 1])
    j_up, j_mid = jitter.random(len(h)), jitter.random(len(h)) - 0.5
    h_min = np.rint(np.sqrt(AREA[0] * total / r))
    u_tf = (h - h_min + j_up) / (height - h_min + 1)
    h0_sq = AREA[0] * total / r
    u_tv = ((h + j_mid) ** 2 - h0_sq) / ((height + 0.5) ** 2 - h0_sq)
    return {
        "p_tf_law": stats.kstest(u_tf, "uniform").pvalue,
        "p_tv_law": stats.kstest(u_tv, "uniform").pvalue,
        "median_area": float(np.median(h * w / total)),
    }


def test_area_law_tf_vs_torchvision_256x512() -> None:
    tf_stats = _area_statistics(_boxes(tf_inception_crop_box, 0, 256, 512, AREA), 256, 512, 0)
    tv_stats = _area_statistics(_boxes(random_resized_crop_box, 0, 256, 512, AREA), 256, 512, 0)
    # Measured (seed 0): TF p_tf_law 0.41, p_tv_law ~1e-321; torchvision p_tf_law ~1e-304, p_tv_law 0.14.
    # Over 20 seeds the "right law" p-values ranged 0.12..0.90 (TF) and 0.006..0.99 (torchvision), the "wrong law"
    # ones stayed below 1e-280.
    assert tf_stats["p_tf_law"] > PASS_P and tf_stats["p_tv_law"] < REJECT_P
    assert tv_stats["p_tv_law"] > PASS_P and tv_stats["p_tf_law"] < REJECT_P
    # TF oversamples small crops: median area fraction 0.218 vs 0.281 (over 20 seeds TF <= 0.220, torchvision
    # >= 0.277); require a 0.04 gap.
    assert tf_stats["median_area"] + 0.04 < tv_stats["median_area"]
    assert 0.20 < tf_stats["median_area"] < 0.24 and 0.26 < tv_stats["median_area"] < 0.30


def test_aspect_ratio_law_tf_linear_vs_torchvision_log() -> None:
    # On 256x512 with area up to 1, torchvision rejects many proposals (area > ratio / 2) and the rejections favour
    # small ratios, which turns its log-uniform proposal into something close to linear-uniform there. So the ratio
    # laws are compared where neither sampler ever rejects: a 2048x2048 image with area in [0.05, 0.5] (every
    # proposal fits since 0.5 < 0.75). The large image keeps the rounding of w / h below 0.5 / 458; a jitter of the
    # integer width removes its granularity.
    area = (0.05, 0.5)
    lin = (ASPECT[0], ASPECT[1] - ASPECT[0])
    results = {}
    for name, sampler in (("tf", tf_inception_crop_box), ("tv", random_resized_crop_box)):
        boxes = _boxes(sampler, 1, 2048, 2048, area)
        jitter = np.random.default_rng([1, 2]).random(len(boxes)) - 0.5
        r = (boxes[:, 3] + jitter) / boxes[:, 2]
        results[name] = (stats.kstest(r, "uniform", args=lin).pvalue,
                         stats.kstest(r, "loguniform", args=ASPECT).pvalue, float(r.mean()))
    p_lin_tf, p_log_tf, mean_tf = results["tf"]
    p_lin_tv, p_log_tv, mean_tv = results["tv"]
    # Measured (seed 1): TF p_lin 0.65, p_log 1e-89; torchvision p_lin 4e-99, p_log 0.81. Over 20 seeds the
    # "right law" p-values ranged 0.16..0.94 (TF) and 0.08..0.90 (torchvision), the "wrong law" ones < 1e-78.
    assert p_lin_tf > PASS_P and p_log_tf < REJECT_P
    assert p_log_tv > PASS_P and p_lin_tv < REJECT_P
    # Means: linear-uniform (0.75 + 1.33) / 2 = 1.040, log-uniform 0.58 / ln(1.33 / 0.75) = 1.0125; the standard
    # error is 0.167 / sqrt(20000) = 0.0012, so +-0.006 is 5 standard errors and the two targets are 23 apart.
    # Measured means 1.0399 (TF) and 1.0118 (torchvision).
    assert abs(mean_tf - 1.040) < 0.006
    assert abs(mean_tv - 1.0125) < 0.006
