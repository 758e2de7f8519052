"""big_vision's eval geometry (mupvit/data/resize.py) against exact references: TF's area method as exact
area-weighted means (rational arithmetic) at integer and non-integer ratios, TF's rounded long side, the floored
central-crop offset and the truncating uint8 cast."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from mupvit.data.resize import (
    area_resize,
    central_crop,
    resize_small,
    resize_small_size,
    to_uint8_truncating,
)


def exact_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each output pixel: the mean of the input over its box [i*s, (i+1)*s) x [j*t, (j+1)*t), exactly."""
    in_h, in_w = image.shape
    s, t = Fraction(in_h, height), Fraction(in_w, width)
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            total = Fraction(0)
            for y in range(in_h):
                wy = max(Fraction(0), min(Fraction(y + 1), (i + 1) * s) - max(Fraction(y), i * s))
                if wy:
                    for x in range(in_w):
                        wx = max(Fraction(0), min(Fraction(x + 1), (j + 1) * t) - max(Fraction(x), j * t))
                        total += wy * wx * int(image[y, x])
            out[i, j] = float(total / (s * t))
    return out


@pytest.mark.parametrize("size_in, size_out", [((12, 8), (6, 4)), ((10, 7), (4, 3)), ((9, 13), (5, 7)),
                                               ((5, 6), (8, 9))])
def test_area_resize_is_the_exact_area_weighted_mean(size_in, size_out):
    image = np.random.default_rng(sum(size_in)).integers(0, 256, size_in).astype(np.uint8)
    ours = area_resize(torch.from_numpy(image)[None], *size_out)[0].numpy()
    np.testing.assert_allclose(ours, exact_area(image, *size_out), rtol=0, atol=1e-9)


def test_torch_area_interpolation_is_not_tfs_at_non_integer_ratios():
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 10, 7)).astype(np.float64))
    pooled = F.interpolate(image[None], size=(4, 3), mode="area")[0]  # adaptive average pooling
    assert (pooled - area_resize(image, 4, 3)).abs().max() > 1.0
    integer = F.interpolate(image[None], size=(5, 7), mode="area")[0]  # 2:1 rows, 1:1 columns: they agree
    torch.testing.assert_close(integer, area_resize(image, 5, 7))


@pytest.mark.parametrize("hw, expected", [((257, 300), (256, 299)), ((300, 257), (299, 256)),
                                          ((500, 334), (383, 256)), ((375, 500), (256, 341)),
                                          ((256, 256), (256, 256))])
def test_resize_small_rounds_the_long_side(hw, expected):
    assert resize_small_size(*hw, 256) == expected


def test_torchvision_truncates_the_long_side_where_tf_rounds():
    image = torch.zeros(3, 257, 300, dtype=torch.uint8)
    assert TF.resize(image, [256]).shape[-1] == 298  # int(256 * 300 / 257) = int(298.83)
    assert resize_small(image, 256).shape[-2:] == (256, 299)  # round(298.83)


def test_central_crop_floors_its_offset():
    image = torch.arange(334 * 500, dtype=torch.int32).reshape(1, 334, 500)
    ours = central_crop(image, 224)
    assert ours[0, 0, 0] == image[0, 55, 138]  # (334 - 224) // 2 = 55, (500 - 224) // 2 = 138
    odd = torch.arange(383, dtype=torch.int32).reshape(1, 1, 383).expand(1, 224, 383)
    assert central_crop(odd, 224)[0, 0, 0] == 79  # (383 - 224) // 2; torchvision rounds 79.5 to 80
    assert TF.center_crop(odd, [224, 224])[0, 0, 0] == 80


def test_the_cast_back_truncates():
    values = torch.tensor([-3.0, 0.4, 0.99, 1.0, 127.5, 254.999, 255.0, 300.0], dtype=torch.float64)
    assert to_uint8_truncating(values).tolist() == [0, 0, 0, 1, 127, 254, 255, 255]


def test_resize_small_at_the_same_size_is_the_identity_and_integer_ratios_are_block_means():
    image = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 32, 48)).astype(np.uint8))
    assert torch.equal(resize_small(image, 32), image)
    half = resize_small(image, 16)
    blocks = image.double().reshape(3, 16, 2, 24, 2).mean(dim=(2, 4))
    assert torch.equal(half, blocks.floor().to(torch.uint8))
