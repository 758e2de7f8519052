"""RandAugment as big_vision does it (big_vision/pp/autoaugment.py, `distort_image_with_randaugment`), in torch.

Every op takes and returns a uint8 tensor of shape (3, H, W). The numerics follow the TF reference, including
its quirks, so that each op lands within +-1 grey level of big_vision's output:

- 16 ops, no Identity; each layer picks one uniformly and always applies it (the per-op `prob` that big_vision
  draws is never used by RandAugment).
- Geometric ops (Rotate, ShearX/Y, TranslateX/Y) are tfa projective transforms with nearest-neighbour sampling;
  pixels that come from outside the image and Cutout's patch are filled with (128, 128, 128).
- Contrast blends towards image_area / 256 instead of the mean grey level (a bug kept in mode "big_vision").
- Solarize at magnitude 10 gets threshold 256, which wraps to 0 as uint8, so it inverts every pixel.
- Colour-type factors (Color, Contrast, Brightness, Sharpness) are M/10 * 1.8 + 0.1 and never negated.

Randomness comes only from the numpy Generator passed in, never from global RNG state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

ContrastMode = Literal["big_vision", "fixed"]

OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast", "Brightness",
    "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)
MAX_LEVEL = 10.0
FILL_VALUE = 128  # big_vision's replace=[128, 128, 128] for geometric ops and Cutout
# tf.image.rgb_to_grayscale weights (they sum to 0.9999, not 1).
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _check(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers


def _blend(image1: torch.Tensor, image2: torch.Tensor, factor: float) -> torch.Tensor:
    """big_vision `blend`: image1 + factor * (image2 - image1) in float32, clipped to [0, 255] and truncated
    (tf.cast float->uint8 truncates, it does not round)."""
    if factor == 0.0:
        return image1.clone()
    if factor == 1.0:
        return image2.clone()
    a = image1.float()
    temp = a + (image2.float() - a) * factor
    return temp.clamp_(0.0, 255.0).to(torch.uint8)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.where(mask, a, b) for uint8 tensors as b + mask * (a - b), exact in wrap-around uint8 arithmetic and
    an order of magnitude faster than torch.where on CPU."""
    return b + mask.view(torch.uint8) * (a - b)


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """tf.image.rgb_to_grayscale on uint8: to float by * (1/255), weighted sum, back to uint8 by * 255.5 and
    truncation. Returns (H, W) uint8. A grey pixel (v, v, v) maps back to v."""
    flt = image.float() * (1.0 / 255.0)
    gray = flt[0] * _GRAY_WEIGHTS[0] + flt[1] * _GRAY_WEIGHTS[1] + flt[2] * _GRAY_WEIGHTS[2]
    return (gray * 255.5).clamp_(0.0, 255.0).to(torch.uint8)


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
                         ) -> torch.Tensor:
    """Flat source index (into the image plus one fill pixel at h*w) of every output pixel of the transform.
    Cached: at a fixed magnitude each geometric op uses only two transforms (the sign flip), so a loader worker
    computes each once and afterwards an op is a single gather."""
    f32 = torch.float32
    xs = torch.arange(w, dtype=f32)[None, :]
    ys = torch.arange(h, dtype=f32)[:, None]
    # Same float32 operation order as the kernel: (t0 * x + t1 * y) + t2.
    x_in = xs * torch.tensor(a0, dtype=f32) + ys * torch.tensor(a1, dtype=f32) + torch.tensor(a2, dtype=f32)
    y_in = xs * torch.tensor(b0, dtype=f32) + ys * torch.tensor(b1, dtype=f32) + torch.tensor(b2, dtype=f32)
    rx, valid_x = _nearest_index(x_in, w)
    ry, valid_y = _nearest_index(y_in, h)
    # Out-of-image reads point at the fill pixel; float32 holds these integers exactly below 2**24 pixels.
    return ((ry * w + rx - h * w) * (valid_x & valid_y) + h * w).long().reshape(1, h * w)


def _affine_nearest(image: torch.Tensor, a0: float, a1: float, a2: float, b0: float, b1: float, b2: float,
                    ) -> torch.Tensor:
    """tfa.image.transform with [a0, a1, a2, b0, b1, b2, 0, 0], NEAREST, constant fill, followed by big_vision's
    wrap/unwrap: output pixel (x=col, y=row) reads input (a0*x + a1*y + a2, b0*x + b1*y + b2) rounded half away
    from zero; reads outside the image give FILL_VALUE in all three channels. Coordinates are float32 like the
    TF kernel."""
    _, h, w = image.shape
    index = _affine_source_index(h, w, a0, a1, a2, b0, b1, b2).to(image.device)
    fill = torch.full((3, 1), FILL_VALUE, dtype=torch.uint8, device=image.device)
    source = torch.cat([image.reshape(3, h * w), fill], dim=1)
    return source.gather(1, index.expand(3, -1)).reshape(3, h, w)


# ----------------------------------------------------------------------------------------------------------------
# Ops


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    """Per channel: stretch [min, max] to [0, 255] (float32, clip, truncate); constant channels are unchanged."""
    _check(image)
    lo = image.amin(dim=(1, 2)).float()[:, None, None]
    hi = image.amax(dim=(1, 2)).float()[:, None, None]
    scale = 255.0 / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    offset = -lo * scale
    scaled = (image.float() * scale + offset).clamp_(0.0, 255.0).to(torch.uint8)
    return _select(hi > lo, scaled, image)


def equalize(image: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with PIL's lookup table, as big_vision computes it."""
    _check(image)
    flat = image.reshape(3, -1)
    # Per-channel bincount straight on uint8: several times faster than one offset int64 bincount.
    hist = torch.stack([torch.bincount(channel, minlength=256) for channel in flat])
    # Count of the highest occupied grey level, left out of the step as in PIL.
    last = 255 - torch.flip(hist > 0, dims=(1,)).long().argmax(dim=1)
    last_count = hist.gather(1, last[:, None])
    step = (hist.sum(dim=1, keepdim=True) - last_count) // 255
    safe_step = step.clamp(min=1)
    lut = (torch.cumsum(hist, dim=1) + safe_step // 2) // safe_step
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], dim=1).clamp_(0, 255)
    mapped = lut.to(torch.uint8).gather(1, flat.long()).reshape(image.shape)
    # step == 0 (fewer than 255 pixels below the top occupied level, e.g. a constant channel) keeps the channel.
    return _select(step[:, :, None] == 0, image, mapped)


def invert(image: torch.Tensor) -> torch.Tensor:
    _check(image)
    return 255 - image


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the image centre ((W-1)/2, (H-1)/2) with nearest-neighbour sampling and fill 128.

    Convention (tfa.image.rotate): positive degrees turn the content COUNTER-clockwise as displayed (row 0 at the
    top); e.g. at +90 a pixel right of the centre moves above it. big_vision's docstring says "clockwise", but its
    code calls tfa.image.rotate, which is counter-clockwise; the sign is random anyway."""
    _check(image)
    _, h, w = image.shape
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
    return _blend(_grayscale(image).expand(3, -1, -1), image, factor)


def contrast(image: torch.Tensor, factor: float, mode: ContrastMode = "big_vision") -> torch.Tensor:
    """Blend from a constant grey image towards the image.

    mode "big_vision": big_vision sums the 256-bin grey histogram and divides by 256, i.e. the grey level is
    H*W/256 (clipped to 255, truncated), NOT the mean grey level: 4 for a 32x32 image, 196 at 224x224.
    mode "fixed": the true mean of the (TF) grayscale image, rounded half up as PIL's ImageEnhance.Contrast does.
    """
    _check(image)
    _, h, w = image.shape
    if mode == "big_vision":
        level = min(float(np.float32(h * w) / np.float32(256.0)), 255.0)
        grey = int(level)
    elif mode == "fixed":
        grey = int(math.floor(_grayscale(image).double().mean().item() + 0.5))
        grey = min(max(grey, 0), 255)
    else:
        raise ValueError(f"contrast mode must be 'big_vision' or 'fixed', got {mode!r}")
    degenerate = torch.full_like(image, grey)
    return _blend(degenerate, image, factor)


def brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Brightness: blend from black towards the image."""
    _check(image)
    return _blend(torch.zeros_like(image), image, factor)


def sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Sharpness: blend from a smoothed image (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13 on the interior,
    truncated; border pixels keep their value) towards the image. factor > 1 sharpens, < 1 blurs.

    The smoothing is exact integer arithmetic (sum // 13) done in float32, which is faster than int16 here and
    still exact: sums stay below 2**24, and float32 division cannot carry a quotient across an integer (the gap is
    at least 1/13). TF's float32 depthwise conv can land one grey level lower where the sum is an exact multiple
    of 13, which is within the +-1 tolerance."""
    _check(image)
    _, h, w = image.shape
    smoothed = image.clone()
    if h >= 3 and w >= 3:
        v = image.float()  # sums reach 13 * 255 = 3315
        rows = v[:, :, :-2] + v[:, :, 1:-1] + v[:, :, 2:]
        sums = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4 * v[:, 1:-1, 1:-1]  # 3x3 box + 4 more on the centre
        smoothed[:, 1:-1, 1:-1] = (sums / 13.0).to(torch.uint8)  # truncation is floor for these non-negatives
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


def cutout(image: torch.Tensor, pad_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Fill rows [cy - pad, cy + pad) x cols [cx - pad, cx + pad) (clipped to the image) with 128, where the
    centre row cy ~ U{0..H-1} is drawn first, then the centre column cx ~ U{0..W-1}. The patch can hang over the
    border, and pad_size 0 leaves the image unchanged."""
    _check(image)
    _, h, w = image.shape
    cy = int(rng.integers(0, h))
    cx = int(rng.integers(0, w))
    out = image.clone()
    out[:, max(0, cy - pad_size):min(h, cy + pad_size), max(0, cx - pad_size):min(w, cx + pad_size)] = FILL_VALUE
    return out


# ----------------------------------------------------------------------------------------------------------------
# Magnitude -> arguments, and dispatch


def _randomly_negate(value: float, rng: np.random.Generator) -> float:
    # big_vision keeps the sign when floor(u + 0.5) is 1, i.e. u >= 0.5.
    return value if rng.random() >= 0.5 else -value


def level_to_arg(name: str, magnitude: float, rng: np.random.Generator, translate_const: float = 100,
                 cutout_const: int = 40) -> tuple:
    """The op's positional arguments at `magnitude` (0..10), as big_vision's level_to_arg. Only Rotate, ShearX/Y
    and TranslateX/Y consume an rng draw (the sign flip, probability 1/2)."""
    m = float(magnitude) / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (_randomly_negate(m * 30.0, rng),)
    if name in ("ShearX", "ShearY"):
        return (_randomly_negate(m * 0.3, rng),)
    if name in ("TranslateX", "TranslateY"):
        return (_randomly_negate(m * float(translate_const), rng),)
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


_SIMPLE_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate, "Posterize": posterize,
    "Solarize": solarize, "Color": color, "Brightness": brightness, "Sharpness": sharpness, "ShearX": shear_x,
    "ShearY": shear_y, "TranslateX": translate_x, "TranslateY": translate_y, "SolarizeAdd": solarize_add,
}


def apply_op(name: str, image: torch.Tensor, magnitude: float, rng: np.random.Generator,
             contrast_mode: ContrastMode = "big_vision", translate_const: float = 100,
             cutout_const: int = 40) -> torch.Tensor:
    """Apply the named op at `magnitude`, drawing sign flips and Cutout's centre from `rng`."""
    args = level_to_arg(name, magnitude, rng, translate_const, cutout_const)
    if name == "Contrast":
        return contrast(image, *args, mode=contrast_mode)
    if name == "Cutout":
        return cutout(image, *args, rng=rng)
    return _SIMPLE_OPS[name](image, *args)


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

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        _check(image)
        for _ in range(self.num_layers):
            image = self.apply_op(self.choose_op(rng), image, rng)
        return image

    def __repr__(self) -> str:
        return (f"RandAugment(num_layers={self.num_layers}, magnitude={self.magnitude}, "
                f"contrast_mode={self.contrast_mode!r})")
