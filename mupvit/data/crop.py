"""Inception crop box with TensorFlow semantics (tf.image.sample_distorted_bounding_box), as big_vision's
`decode_jpeg_and_inception_crop` uses it: no bounding boxes, use_image_if_no_bounding_boxes=True,
min_object_covered=0, max_attempts=100.

Mirrors `GenerateRandomCrop` and the attempt loop of tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc,
including its float32 arithmetic and round-half-to-even (lrintf). The random stream is numpy's, not TF's Philox, so the
boxes follow the same distribution, not the same sequence. With min_object_covered=0 and the whole image as the only
bounding box, the kernel's overlap check reduces to "crop area >= 1 pixel", which a successful attempt always meets.
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32
_EPS = float(_F32(1e-7))  # the kernel's `const float kEps = 0.0000001`, used in double arithmetic


def _lrintf(x: np.float32) -> int:
    """C lrintf under the default rounding mode: round half to even (np.rint does the same)."""
    return int(np.rint(x))


def _rand_float(rng: np.random.Generator) -> np.float32:
    """SimplePhilox::RandFloat: 23 random mantissa bits, a float32 multiple of 2**-23 in [0, 1)."""
    return _F32(int(rng.integers(0, 1 << 23))) * _F32(2.0**-23)


def _generate_random_crop(
    rng: np.random.Generator, height: int, width: int, min_area: np.float32, max_area: np.float32,
    ratio: np.float32,
) -> tuple[int, int, int, int] | None:
    """One attempt of the kernel's GenerateRandomCrop for a given aspect ratio (width / height); (top, left, h, w), or
    None when the attempt fails. `min_area` / `max_area` are in pixels (float32)."""
    if max_area <= 0 or ratio <= 0 or width <= 0 or height <= 0 or min_area > max_area:
        return None
    # Unlike torchvision (area drawn uniformly, then h and w derived from it), TF draws the crop *height* uniformly
    # between the heights matching the min and max area at this ratio, so small areas are oversampled.
    crop_h = _lrintf(np.sqrt(min_area / ratio))
    max_h = _lrintf(np.sqrt(max_area / ratio))
    # Clip max_h so that round(max_h * ratio) <= width; this bound is computed in double in the kernel.
    if _lrintf(_F32(max_h) * ratio) > width:
        max_h = int((width + 0.5 - _EPS) / float(ratio))
        if _lrintf(_F32(max_h) * ratio) > width:
            max_h -= 1
    max_h = min(max_h, height)
    # If the minimum height is already >= the clipped maximum the kernel does not fail here: it takes max_h and lets
    # the area checks below decide.
    if crop_h >= max_h:
        crop_h = max_h
    else:
        crop_h += int(rng.integers(0, max_h - crop_h + 1))  # uniform integer in [crop_h, max_h], both ends included
    crop_w = _lrintf(_F32(crop_h) * ratio)
    # The kernel's rounding repairs: one pixel taller if the area fell short, one shorter if it overshoots.
    area = _F32(crop_w * crop_h)
    if area < min_area:
        crop_h += 1
        crop_w = _lrintf(_F32(crop_h) * ratio)
        area = _F32(crop_w * crop_h)
    if area > max_area:
        crop_h -= 1
        crop_w = _lrintf(_F32(crop_h) * ratio)
        area = _F32(crop_w * crop_h)
    if area < min_area or area > max_area or crop_w > width or crop_h > height or crop_w <= 0 or crop_h <= 0:
        return None
    # Offsets use Uniform(n), i.e. [0, n): a crop smaller than the image never touches its bottom/right edge
    # (torchvision's offsets include the last position). y is drawn before x.
    top = int(rng.integers(0, height - crop_h)) if crop_h < height else 0
    left = int(rng.integers(0, width - crop_w)) if crop_w < width else 0
    return top, left, crop_h, crop_w


def tf_inception_crop_box(
    rng: np.random.Generator, height: int, width: int, area: tuple[float, float], aspect: tuple[float, float],
    attempts: int = 100,
) -> tuple[int, int, int, int]:
    """Crop box (top, left, h, w) as tf.image.sample_distorted_bounding_box samples it for an image of
    `height` x `width`, with `area` the crop-area range as fractions of the image and `aspect` the width / height range.

    Differences from torchvision's RandomResizedCrop (`transforms.random_resized_crop_box`): up to `attempts` (100)
    tries instead of 10; the aspect ratio is uniform in linear space, not log space; the crop height, not the area, is
    uniform; offsets exclude the last position; after all failed attempts the whole image, not a centre crop."""
    if not (0 < area[0] <= 1 and 0 < area[1] <= 1):
        raise ValueError(f"area range must lie in (0, 1], got {area}")
    if not (aspect[0] > 0 and aspect[1] > 0):
        raise ValueError(f"aspect ratio range must be positive, got {aspect}")
    if attempts <= 0:
        raise ValueError(f"attempts must be positive, got {attempts}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    # float32 as in the kernel: float * int * int.
    min_area = _F32(area[0]) * _F32(width) * _F32(height)
    max_area = _F32(area[1]) * _F32(width) * _F32(height)
    lo, hi = _F32(aspect[0]), _F32(aspect[1])
    for _ in range(attempts):
        ratio = _rand_float(rng) * (hi - lo) + lo  # uniform in linear space (torchvision: log space)
        box = _generate_random_crop(rng, height, width, min_area, max_area, ratio)
        if box is not None:
            return box
    return 0, 0, height, width  # the whole image (torchvision: a centre crop clamped to the ratio range)

