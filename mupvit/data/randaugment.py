"""RandAugment as big_vision does it (big_vision/pp/autoaugment.py, `distort_image_with_randaugment`), in torch.

Every op takes and returns a uint8 tensor of shape (3, H, W), or a batch (B, 3, H, W) that it treats image by image
with the same arguments: the per-image loader path and the batched device path (mupvit/data/batched_augment.py) run
these very functions. The numerics follow the TF reference, including its quirks, so that each op lands within +-1
grey level of big_vision's output:

- 16 ops, no Identity; each layer picks one uniformly and always applies it (the per-op `prob` that big_vision
  draws is never used by RandAugment).
- Geometric ops (Rotate, ShearX/Y, TranslateX/Y) are tfa projective transforms with nearest-neighbour sampling;
  pixels that come from outside the image and Cutout's patch are filled with (128, 128, 128).
- Contrast blends towards image_area / 256 instead of the mean grey level (a bug kept in mode "big_vision").
- Solarize at magnitude 10 gets threshold 256, which wraps to 0 as uint8, so it inverts every pixel.
- Colour-type factors (Color, Contrast, Brightness, Sharpness) are M/10 * 1.8 + 0.1 and never negated.

Randomness comes only from the numpy Generator passed in, never from global RNG state, and no draw depends on pixel
values: `RandAugment.draw` makes an image's draws without applying anything.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

ContrastMode = Literal["big_vision", "fixed"]

OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast", "Brightness",
    "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})  # sign flipped at random
MAX_LEVEL = 10.0
FILL_VALUE = 128  # big_vision's replace=[128, 128, 128] for geometric ops and Cutout
# tf.image.rgb_to_grayscale weights (they sum to 0.9999, not 1).
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _check(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) or (B, 3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")


def _check_one(image: torch.Tensor) -> None:
    """Where draws are made for one image; a batch's draws come as plans (mupvit/data/batched_augment.py)."""
    _check(image)
    if image.ndim != 3:
        raise ValueError(f"expected one uint8 (3, H, W) image, got a batch {tuple(image.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers


def _blend(image1: torch.Tensor, image2: torch.Tensor, factor: float) -> torch.Tensor:
    """big_vision `blend`: image1 + factor * (image2 - image1) in float32, clipped to [0, 255] and truncated
    (tf.cast float->uint8 truncates, it does not round). image1 may broadcast to image2 (a constant (..., 1, 1, 1),
    a grey (..., 1, H, W)): faster than converting the full image1 to float."""
    if factor == 0.0:
        return image1.expand_as(image2).clone()
    if factor == 1.0:
        return image2.clone()
    a = image1.float()
    # In place on one float temporary, the same roundings as a + (image2 - a) * factor.
    temp = image2.float().sub_(a).mul_(factor).add_(a)
    return temp.clamp_(0.0, 255.0).to(torch.uint8)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.where(mask, a, b) for uint8 tensors as b + mask * (a - b), exact in wrap-around uint8 arithmetic and
    an order of magnitude faster than torch.where on CPU."""
    return b + mask.view(torch.uint8) * (a - b)


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """tf.image.rgb_to_grayscale on uint8: to float by * (1/255), weighted sum, back to uint8 by * 255.5 and
    truncation. Returns (..., 1, H, W) uint8. A grey pixel (v, v, v) maps back to v."""
    r, g, b = image.float().mul_(1.0 / 255.0).split(1, dim=-3)
    gray = (r * _GRAY_WEIGHTS[0]).add_(g * _GRAY_WEIGHTS[1]).add_(b * _GRAY_WEIGHTS[2])  # (r + g) + b
    return gray.mul_(255.5).clamp_(0.0, 255.0).to(torch.uint8)


def _nearest_index(coord: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest pixel for float32 source coordinates as the TF kernel picks it: std::round (halves away from
    zero), then a bounds check. torch.round rounds halves to even, so positive halves are bumped up; negative
    coordinates are out of bounds except those above -0.5 (which round to 0), so they need no tie handling."""
    r = torch.round(coord)
    r += (coord - r) == 0.5
    valid = (coord > -0.5) & (r < size)
    return r, valid


@functools.lru_cache(maxsize=64)
def _affine_source_index(h: int, w: int, a0: float, a1: float, a2: float, b0: float, b1: float, b2: float,
                         device: torch.device) -> torch.Tensor:
    """Flat source index (into the image plus one fill pixel at h*w) of every output pixel of the transform, on
    `device` (computed on the CPU, so alike for every device). Cached: at a fixed magnitude each geometric op uses
    only two transforms (the sign flip), so a loader worker or the device computes each once and afterwards an op
    is a single gather."""
    f32 = torch.float32
    xs = torch.arange(w, dtype=f32)[None, :]
    ys = torch.arange(h, dtype=f32)[:, None]
    # Same float32 operation order as the kernel: (t0 * x + t1 * y) + t2.
    x_in = xs * torch.tensor(a0, dtype=f32) + ys * torch.tensor(a1, dtype=f32) + torch.tensor(a2, dtype=f32)
    y_in = xs * torch.tensor(b0, dtype=f32) + ys * torch.tensor(b1, dtype=f32) + torch.tensor(b2, dtype=f32)
    rx, valid_x = _nearest_index(x_in, w)
    ry, valid_y = _nearest_index(y_in, h)
    # Out-of-image reads point at the fill pixel; float32 holds these integers exactly below 2**24 pixels.
    index = ((ry * w + rx - h * w) * (valid_x & valid_y) + h * w).long().reshape(1, h * w)
    return index.to(device, non_blocking=True)


def _affine_nearest(image: torch.Tensor, a0: float, a1: float, a2: float, b0: float, b1: float, b2: float,
                    ) -> torch.Tensor:
    """tfa.image.transform with [a0, a1, a2, b0, b1, b2, 0, 0], NEAREST, constant fill, followed by big_vision's
    wrap/unwrap: output pixel (x=col, y=row) reads input (a0*x + a1*y + a2, b0*x + b1*y + b2) rounded half away
    from zero; reads outside the image give FILL_VALUE in all three channels. Coordinates are float32 like the
    TF kernel."""
    *lead, _, h, w = image.shape
    index = _affine_source_index(h, w, a0, a1, a2, b0, b1, b2, image.device)
    fill = torch.full((*lead, 3, 1), FILL_VALUE, dtype=torch.uint8, device=image.device)
    source = torch.cat([image.reshape(*lead, 3, h * w), fill], dim=-1)
    return source.gather(-1, index.expand(*lead, 3, -1)).reshape(image.shape)


# ----------------------------------------------------------------------------------------------------------------
# Ops


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    """Per channel: stretch [min, max] to [0, 255] (float32, clip, truncate); constant channels are unchanged."""
    _check(image)
    lo = image.amin(dim=(-2, -1), keepdim=True).float()
    hi = image.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    offset = -lo * scale
    scaled = image.float().mul_(scale).add_(offset).clamp_(0.0, 255.0).to(torch.uint8)
    return _select(hi > lo, scaled, image)


def _histograms_bincount(rows: torch.Tensor) -> torch.Tensor:
    """(N, 256) grey-level counts of each row of a uint8 (N, P) tensor. A bincount per row straight on uint8 is
    several times faster on the CPU than one offset int64 bincount or a scatter_add."""
    return torch.stack([torch.bincount(row, minlength=256) for row in rows])


def _histograms_scatter(rows: torch.Tensor) -> torch.Tensor:
    """The same counts by one scatter_add: on an accelerator bincount reads its input's maximum back to the host
    (a sync per row), scatter_add does not."""
    ones = torch.ones((), dtype=torch.int64, device=rows.device).expand(rows.shape)
    return torch.zeros(rows.shape[0], 256, dtype=torch.int64, device=rows.device).scatter_add_(1, rows.long(), ones)


def equalize(image: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with PIL's lookup table, as big_vision computes it."""
    _check(image)
    flat = image.reshape(-1, image.shape[-2] * image.shape[-1])  # one row per (image, channel)
    hist = (_histograms_bincount if flat.device.type == "cpu" else _histograms_scatter)(flat)
    # Count of the highest occupied grey level, left out of the step as in PIL.
    last = 255 - torch.flip(hist > 0, dims=(1,)).long().argmax(dim=1)
    last_count = hist.gather(1, last[:, None])
    step = (hist.sum(dim=1, keepdim=True) - last_count) // 255
    safe_step = step.clamp(min=1)
    lut = (torch.cumsum(hist, dim=1) + safe_step // 2) // safe_step
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], dim=1).clamp_(0, 255)
    mapped = lut.to(torch.uint8).gather(1, flat.long()).reshape(image.shape)
    # step == 0 (fewer than 255 pixels below the top occupied level, e.g. a constant channel) keeps the channel.
    return _select(step.reshape(*image.shape[:-2], 1, 1) == 0, image, mapped)


def invert(image: torch.Tensor) -> torch.Tensor:
    _check(image)
    return 255 - image


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the image centre ((W-1)/2, (H-1)/2) with nearest-neighbour sampling and fill 128.

    Convention (tfa.image.rotate): positive degrees turn the content COUNTER-clockwise as displayed (row 0 at the
    top); e.g. at +90 a pixel right of the centre moves above it. big_vision's docstring says "clockwise", but its
    code calls tfa.image.rotate, which is counter-clockwise; the sign is random anyway."""
    _check(image)
    h, w = image.shape[-2:]
    f32 = torch.float32
    # tfa computes the angle, its cos/sin and the offsets in float32.
    angle = torch.tensor(degrees * (math.pi / 180.0), dtype=f32)
    cos, sin = torch.cos(angle), torch.sin(angle)
    wm1, hm1 = torch.tensor(w - 1, dtype=f32), torch.tensor(h - 1, dtype=f32)
    x_offset = (wm1 - (cos * wm1 - sin * hm1)) / 2.0
    y_offset = (hm1 - (sin * wm1 + cos * hm1)) / 2.0
    return _affine_nearest(image, cos.item(), -sin.item(), x_offset.item(), sin.item(), cos.item(), y_offset.item())


def posterize(image: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top `bits` bits. TF clamps shift amounts to [0, 7], so bits=0 (magnitude < 2.5) behaves like
    bits=1 rather than zeroing the image."""
    _check(image)
    shift = min(max(8 - int(bits), 0), 7)
    return image & ((0xFF << shift) & 0xFF)


def solarize(image: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert pixels >= threshold. big_vision compares the uint8 image with a Python int, which TF converts to
    uint8: threshold 256 (magnitude 10) wraps to 0, so every pixel is inverted (Solarize becomes Invert)."""
    _check(image)
    t = int(threshold) % 256
    return _select(image < t, image, 255 - image)


def solarize_add(image: torch.Tensor, addition: int, threshold: int = 128) -> torch.Tensor:
    """Add `addition` (clipped to [0, 255]) to pixels below `threshold`; others are unchanged."""
    _check(image)
    addition = int(addition)
    # Saturating uint8 add without widening: clamp first so that the sum cannot wrap.
    if addition >= 0:
        added = image.clamp(max=max(255 - addition, 0)) + min(addition, 255)
    else:
        added = image.clamp(min=min(-addition, 255)) - min(-addition, 255)
    return _select(image < threshold, added, image)


def color(image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Color: blend from the (TF) grayscale image towards the image."""
    _check(image)
    return _blend(_grayscale(image), image, factor)


def contrast(image: torch.Tensor, factor: float, mode: ContrastMode = "big_vision") -> torch.Tensor:
    """Blend from a constant grey image towards the image.

    mode "big_vision": big_vision sums the 256-bin grey histogram and divides by 256, i.e. the grey level is
    H*W/256 (clipped to 255, truncated), NOT the mean grey level: 4 for a 32x32 image, 196 at 224x224.
    mode "fixed": the true mean of the (TF) grayscale image, rounded half up as PIL's ImageEnhance.Contrast does.
    """
    _check(image)
    h, w = image.shape[-2:]
    if mode == "big_vision":
        level = min(float(np.float32(h * w) / np.float32(256.0)), 255.0)
        degenerate = torch.full((1, 1, 1), int(level), dtype=torch.uint8, device=image.device)
    elif mode == "fixed":
        # Per image, on its device: the sum of integer grey levels is exact in float64, so the mean is alike
        # whatever the reduction order. A mean in [0, 255] rounds into [0, 255].
        mean = _grayscale(image).double().mean(dim=(-2, -1), keepdim=True)
        degenerate = (mean + 0.5).floor_().to(torch.uint8)
    else:
        raise ValueError(f"contrast mode must be 'big_vision' or 'fixed', got {mode!r}")
    return _blend(degenerate, image, factor)


def brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Brightness: blend from black towards the image."""
    _check(image)
    return _blend(torch.zeros((1, 1, 1), dtype=torch.uint8, device=image.device), image, factor)


def sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Sharpness: blend from a smoothed image (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13 on the interior,
    truncated; border pixels keep their value) towards the image. factor > 1 sharpens, < 1 blurs.

    The smoothing is exact integer arithmetic (sum // 13) done in float32, which is faster than int16 here and
    still exact: sums stay below 2**24, and float32 division cannot carry a quotient across an integer (the gap is
    at least 1/13). CUDA divides by a Python number as a multiply by its float32 reciprocal, which gives the same
    floors for every sum up to 3315 (tests/test_batched_augment.py checks all of them). TF's float32 depthwise conv
    can land one grey level lower where the sum is an exact multiple of 13, which is within the +-1 tolerance."""
    _check(image)
    h, w = image.shape[-2:]
    smoothed = image.clone()
    if h >= 3 and w >= 3:
        v = image.float()  # sums reach 13 * 255 = 3315
        rows = (v[..., :-2] + v[..., 1:-1]).add_(v[..., 2:])
        # 3x3 box + 4 more on the centre; integers below 2**24, so exact in any order
        sums = (rows[..., :-2, :] + rows[..., 1:-1, :]).add_(rows[..., 2:, :]).add_(v[..., 1:-1, 1:-1] * 4)
        smoothed[..., 1:-1, 1:-1] = sums.div_(13.0).to(torch.uint8)  # truncation is floor for these non-negatives
    return _blend(smoothed, image, factor)


def shear_x(image: torch.Tensor, level: float) -> torch.Tensor:
    """tfa transform [1, level, 0, 0, 1, 0, 0, 0]: output (x, y) reads input (x + level*y, y). The shear is about
    the top-left corner (row 0 does not move); positive level shifts lower rows' content to the left."""
    _check(image)
    return _affine_nearest(image, 1.0, level, 0.0, 0.0, 1.0, 0.0)


def shear_y(image: torch.Tensor, level: float) -> torch.Tensor:
    """tfa transform [1, 0, 0, level, 1, 0, 0, 0]: output (x, y) reads input (x, level*x + y); column 0 does not
    move, positive level shifts right-hand columns' content up."""
    _check(image)
    return _affine_nearest(image, 1.0, 0.0, 0.0, level, 1.0, 0.0)


def translate_x(image: torch.Tensor, pixels: float) -> torch.Tensor:
    """big_vision calls tfa translate with dx = -pixels: output (x, y) reads input (x + pixels, y), so positive
    pixels move the content LEFT (PIL's convention). Vacated pixels are 128."""
    _check(image)
    return _affine_nearest(image, 1.0, 0.0, pixels, 0.0, 1.0, 0.0)


def translate_y(image: torch.Tensor, pixels: float) -> torch.Tensor:
    """Output (x, y) reads input (x, y + pixels): positive pixels move the content UP."""
    _check(image)
    return _affine_nearest(image, 1.0, 0.0, 0.0, 0.0, 1.0, pixels)


def _draw_cutout_centre(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    """Cutout's centre: the row cy ~ U{0..H-1} is drawn first, then the column cx ~ U{0..W-1}."""
    return int(rng.integers(0, h)), int(rng.integers(0, w))


def cutout_at(image: torch.Tensor, pad_size: int, centres: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Fill rows [cy - pad, cy + pad) x cols [cx - pad, cx + pad) (clipped to the image) with 128, one (cy, cx) per
    image. The patch can hang over the border, and pad_size 0 leaves the image unchanged. A slice fill per image:
    a mask built from aranges costs ~10x more per image on the CPU."""
    _check(image)
    h, w = image.shape[-2:]
    out = image.clone()
    images = out.unsqueeze(0) if out.ndim == 3 else out  # a view: filling it fills `out`
    if len(centres) != len(images):
        raise ValueError(f"cutout: {len(centres)} centres for {len(images)} image(s)")
    for i, (cy, cx) in enumerate(centres):
        rows = slice(max(0, cy - pad_size), min(h, cy + pad_size))
        images[i, :, rows, max(0, cx - pad_size):min(w, cx + pad_size)] = FILL_VALUE
    return out


def cutout(image: torch.Tensor, pad_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Cutout of one image at a centre drawn from `rng` (see `cutout_at`)."""
    _check_one(image)
    return cutout_at(image, pad_size, [_draw_cutout_centre(rng, *image.shape[-2:])])


# ----------------------------------------------------------------------------------------------------------------
# Magnitude -> arguments, and dispatch


def _draw_negate(rng: np.random.Generator) -> bool:
    # big_vision keeps the sign when floor(u + 0.5) is 1, i.e. u >= 0.5.
    return rng.random() < 0.5


def draw_op(name: str, rng: np.random.Generator, h: int, w: int) -> tuple[bool, tuple[int, int]]:
    """The draws op `name` makes once picked, in big_vision's order, for an h x w image: (negate, Cutout's centre).
    Only the geometric SIGNED_OPS draw the sign flip and only Cutout its centre; (0, 0) for the others."""
    negate = name in SIGNED_OPS and _draw_negate(rng)
    return negate, _draw_cutout_centre(rng, h, w) if name == "Cutout" else (0, 0)


def op_args(name: str, magnitude: float, negate: bool = False, translate_const: float = 100,
            cutout_const: int = 40) -> tuple:
    """The op's positional arguments at `magnitude` (0..10) as big_vision's level_to_arg, with the sign flip of
    the geometric ops given (`negate`) instead of drawn."""
    m = float(magnitude) / MAX_LEVEL
    sign = -1.0 if negate and name in SIGNED_OPS else 1.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (sign * (m * 30.0),)
    if name in ("ShearX", "ShearY"):
        return (sign * (m * 0.3),)
    if name in ("TranslateX", "TranslateY"):
        return (sign * (m * float(translate_const)),)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (m * 1.8 + 0.1,)  # never negated
    if name == "Posterize":
        return (int(m * 4),)
    if name == "Solarize":
        return (int(m * 256),)  # 256 at magnitude 10: see solarize()
    if name == "SolarizeAdd":
        return (int(m * 110),)  # threshold stays at its default 128
    if name == "Cutout":
        return (int(m * cutout_const),)
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {OPS}")


def level_to_arg(name: str, magnitude: float, rng: np.random.Generator, translate_const: float = 100,
                 cutout_const: int = 40) -> tuple:
    """big_vision's level_to_arg: `op_args` with the sign flip drawn from `rng`. Only Rotate, ShearX/Y and
    TranslateX/Y consume an rng draw (the sign flip, probability 1/2)."""
    return op_args(name, magnitude, name in SIGNED_OPS and _draw_negate(rng), translate_const, cutout_const)


_SIMPLE_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate, "Posterize": posterize,
    "Solarize": solarize, "Color": color, "Brightness": brightness, "Sharpness": sharpness, "ShearX": shear_x,
    "ShearY": shear_y, "TranslateX": translate_x, "TranslateY": translate_y, "SolarizeAdd": solarize_add,
}


def apply_drawn_op(name: str, image: torch.Tensor, magnitude: float, negate: bool = False,
                   centres: Sequence[tuple[int, int]] = (), contrast_mode: ContrastMode = "big_vision",
                   translate_const: float = 100, cutout_const: int = 40) -> torch.Tensor:
    """Apply the named op at `magnitude` to an image or a batch, with its draws given: the sign flip (`negate`, one
    for all the images) and Cutout's centres (one per image)."""
    args = op_args(name, magnitude, negate, translate_const, cutout_const)
    if name == "Contrast":
        return contrast(image, *args, mode=contrast_mode)
    if name == "Cutout":
        return cutout_at(image, *args, centres)
    return _SIMPLE_OPS[name](image, *args)


def apply_op(name: str, image: torch.Tensor, magnitude: float, rng: np.random.Generator,
             contrast_mode: ContrastMode = "big_vision", translate_const: float = 100,
             cutout_const: int = 40) -> torch.Tensor:
    """Apply the named op at `magnitude` to one image, drawing sign flips and Cutout's centre from `rng`."""
    _check_one(image)
    negate, centre = draw_op(name, rng, *image.shape[-2:])
    return apply_drawn_op(name, image, magnitude, negate, [centre], contrast_mode, translate_const, cutout_const)


class RandAugment:
    """big_vision's RandAugment: `num_layers` times, pick one of the 16 OPS uniformly and apply it at
    `magnitude`."""

    def __init__(self, num_layers: int = 2, magnitude: float = 10, contrast_mode: ContrastMode = "big_vision",
                 translate_const: float = 100, cutout_const: int = 40) -> None:
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if contrast_mode not in ("big_vision", "fixed"):
            raise ValueError(f"contrast_mode must be 'big_vision' or 'fixed', got {contrast_mode!r}")
        self.num_layers, self.magnitude, self.contrast_mode = int(num_layers), float(magnitude), contrast_mode
        self.translate_const, self.cutout_const = translate_const, int(cutout_const)

    def choose_op(self, rng: np.random.Generator) -> str:
        return OPS[int(rng.integers(len(OPS)))]

    def apply_op(self, name: str, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return apply_op(name, image, self.magnitude, rng, self.contrast_mode, self.translate_const,
                        self.cutout_const)

    def apply_drawn_op(self, name: str, images: torch.Tensor, negate: bool,
                       centres: Sequence[tuple[int, int]]) -> torch.Tensor:
        return apply_drawn_op(name, images, self.magnitude, negate, centres, self.contrast_mode,
                              self.translate_const, self.cutout_const)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        _check_one(image)
        for _ in range(self.num_layers):
            image = self.apply_op(self.choose_op(rng), image, rng)
        return image

    def draw(self, rng: np.random.Generator, h: int, w: int) -> list[tuple[int, bool, tuple[int, int]]]:
        """The draws `__call__` makes for an h x w image, in its order, without applying anything: per layer
        (op index into OPS, negate, Cutout centre), as `draw_op` gives them."""
        layers = []
        for _ in range(self.num_layers):
            name = self.choose_op(rng)
            layers.append((OPS.index(name), *draw_op(name, rng, h, w)))
        return layers

    def __repr__(self) -> str:
        return (f"RandAugment(num_layers={self.num_layers}, magnitude={self.magnitude}, "
                f"contrast_mode={self.contrast_mode!r})")
