"""big_vision's eval geometry, pixel for pixel: `resize_small` (TF's area resize of the shorter side, the long
side rounded, the float result clipped and truncated back to uint8) and `central_crop` (floored offsets).

Hand-written because no library computes TF's area method: torch's F.interpolate(mode="area") is adaptive average
pooling, which weights whole input pixels and so differs from TF at non-integer ratios.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def resize_small_size(height: int, width: int, smaller: int) -> tuple[int, int]:
    """TF's new size: each side times factor = smaller / min(h, w) in float32, rounded half to even (tf.round)."""
    factor = np.float32(smaller) / np.float32(min(height, width))
    return int(np.round(np.float32(height) * factor)), int(np.round(np.float32(width) * factor))


def area_weights(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) matrix: output i averages the input interval [i * s, (i + 1) * s), s = in / out, each input pixel
    weighted by the length of its overlap with it (TF ResizeArea, align_corners=False)."""
    scale = in_size / out_size
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(math.floor(lo)), min(int(math.ceil(hi)), in_size)):
            weights[i, j] = min(hi, j + 1) - max(lo, j)
    return weights / scale


def area_resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """TF's area resize of a (C, H, W) image to (C, height, width), in float64 (separable: rows, then columns)."""
    rows, cols = area_weights(image.shape[-2], height), area_weights(image.shape[-1], width)
    return rows @ image.double() @ cols.T


def to_uint8_truncating(image: torch.Tensor) -> torch.Tensor:
    """big_vision's cast back after a float resize: clip to [0, 255], then truncate (tf.cast), not round."""
    return image.clamp(0, 255).floor().to(torch.uint8)


def resize_small(image: torch.Tensor, smaller: int) -> torch.Tensor:
    """big_vision `resize_small(smaller)` (method area, antialias False) of a uint8 (C, H, W) image."""
    height, width = resize_small_size(image.shape[-2], image.shape[-1], smaller)
    if (height, width) == tuple(image.shape[-2:]):
        return image
    return to_uint8_truncating(area_resize(image, height, width))


def central_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """big_vision `central_crop(size)`: offsets (side - size) // 2 (torchvision's CenterCrop rounds them)."""
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[..., top:top + size, left:left + size]
