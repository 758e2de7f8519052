"""Per-sample image transforms on uint8 tensors. Train-time randomness comes from a numpy Generator
that the stream derives from (seed, position), never from global RNG state."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mupvit.data.crop import tf_inception_crop_box
from mupvit.data.plan import pack_plan
from mupvit.data.randaugment import RandAugment
from mupvit.data.resize import central_crop, resize_small, to_uint8_truncating


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] as big_vision's value_range(-1, 1): x / 127.5 - 1. The divisor is a
    tensor on the image's device because CUDA divides by a Python number as a multiply by its reciprocal, which
    is one ulp off for about half the grey levels; so every device gives the CPU's values."""
    return image.float().div_(torch.full((), 127.5, device=image.device)).sub_(1.0)  # in place: one float tensor


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, area: tuple[float, float], aspect: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop sampling (area uniform, log-uniform aspect ratio, 10 tries, then a
    centre crop clamped to the ratio range); returns (top, left, h, w)."""
    total = height * width
    log_ratio = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target_area = total * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < aspect[0]:
        w, h = width, round(width / aspect[0])
    elif in_ratio > aspect[1]:
        h, w = height, round(height * aspect[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _draw_flip(rng: np.random.Generator) -> bool:
    return rng.random() < 0.5


class TrainTransform:
    """big_vision's train pipeline after decode: Inception crop resized to `size` (bilinear in float, then a
    truncating cast to uint8, as tf.image.resize + tf.cast) -> random horizontal flip -> RandAugment (optional)
    -> [-1, 1].

    Calling it runs all of it on one image (data.augment_on: loader). `crop_and_plan` stops after the crop and
    returns the draws the rest would make, for mupvit/data/batched_augment.py to apply on the device."""

    def __init__(self, size: int, area: tuple[float, float], aspect: tuple[float, float], crop: str = "tf",
                 flip: bool = True, antialias: bool = False, randaugment: RandAugment | None = None) -> None:
        self.size, self.area, self.aspect = size, tuple(area), tuple(aspect)
        self.crop_box = tf_inception_crop_box if crop == "tf" else random_resized_crop_box
        self.flip, self.antialias, self.randaugment = flip, antialias, randaugment

    def crop(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The Inception crop of a decoded uint8 image, resized to uint8 (3, size, size)."""
        top, left, h, w = self.crop_box(rng, image.shape[-2], image.shape[-1], self.area, self.aspect)
        # big_vision resizes in float and casts back to uint8 by truncation (resize on uint8 would round)
        crop = image[..., top:top + h, left:left + w].float()  # only the crop's pixels go to float
        # torchvision's resize of a float image is exactly this call; torch's own keeps torchvision (and the 1.3 s of
        # torch._dynamo it imports) out of every process that only builds datasets (drivers, data probes)
        resized = F.interpolate(crop[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                                antialias=self.antialias)[0]
        return to_uint8_truncating(resized)

    def augment(self, crop: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Flip, RandAugment and [-1, 1] of one crop, drawing from `rng` where `crop` left it."""
        if self.flip and _draw_flip(rng):
            crop = crop.flip(-1)
        if self.randaugment is not None:
            crop = self.randaugment(crop, rng)
        return to_unit_range(crop)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.augment(self.crop(image, rng), rng)

    def plan(self, rng: np.random.Generator) -> torch.Tensor:
        """The draws `augment` would make from `rng`, in its order, none of them applied, as a plan."""
        flip = self.flip and _draw_flip(rng)
        layers = self.randaugment.draw(rng, self.size, self.size) if self.randaugment is not None else []
        return pack_plan(flip, layers)

    def crop_and_plan(self, image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(the uint8 crop, its plan): the loader's share of data.augment_on: device."""
        image = self.crop(image, rng)
        return image, self.plan(rng)


class EvalTransform:
    """Resize the shorter side to `resize`, central crop `size`, [-1, 1]. `method` "tf_area" is big_vision's
    resize_small + central_crop (mupvit/data/resize.py); "torchvision_bilinear" the PyTorch reproduction's
    Resize(antialias=True) + CenterCrop."""

    def __init__(self, size: int, resize: int, method: str = "tf_area") -> None:
        self.size, self.resize, self.method = size, resize, method

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.method == "tf_area":
            return to_unit_range(central_crop(resize_small(image, self.resize), self.size))
        import torchvision.transforms.v2.functional as TF  # only this non-default method needs torchvision

        image = TF.resize(image, [self.resize], antialias=True)
        return to_unit_range(TF.center_crop(image, [self.size, self.size]))
