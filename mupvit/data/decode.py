"""Image files to uint8 (3, H, W) tensors, JPEGs as big_vision decodes them.

big_vision decodes with TF's default DCT, libjpeg's fast integer IDCT (JDCT_IFAST, fancy upsampling on), both in
`decode` (tf.io.decode_image) and in the train op (tf.image.decode_and_crop_jpeg). libjpeg-turbo's fast IDCT,
reached through simplejpeg, gives TF's pixels exactly (0 grey levels apart on 12 ImageNet-like JPEGs, measured
against TF 2.21) and decodes in about 0.6x Pillow's time. `accurate` is the ISLOW IDCT: Pillow's pixels, and
big_vision's `decode(precise=True)`. libjpeg-turbo also converts grey and CMYK JPEGs to RGB (CMYK within 1 level of
Pillow's conversion); other formats (PNG, ...) and any JPEG it refuses go through Pillow, converted to RGB.

The policy for other images, as TF's decode_image(channels=3) treats them: 16-bit images are scaled to 8 bits
(the high byte), alpha is dropped (not composited), palette, 1-bit and CMYK images are converted to RGB. An image of
more than `max_pixels` pixels is refused from its header, before any decoding, naming the file (the default cap,
50 MP, is 4x ImageNet's largest).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import simplejpeg
import torch
from PIL import Image

from mupvit.data.datasets import DataError

Decoder = Literal["tf_fast", "accurate"]
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS = 50_000_000
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}


def check_size(path: str, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DataError(f"image {path} is {width}x{height} = {height * width / 1e6:.1f} MP, above the cap of "
                        f"{max_pixels / 1e6:g} MP; shrink the file (or remove it)")


def decode_jpeg(path: str, data: bytes, method: Decoder, max_pixels: int) -> np.ndarray | None:
    """(H, W, 3) uint8 through libjpeg-turbo, or None when it cannot read this JPEG (Pillow then tries)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    check_size(path, height, width, max_pixels)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=method == "tf_fast", fastupsample=False)
    except ValueError:
        return None


def decode_with_pillow(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    with Image.open(path) as image:
        check_size(path, image.height, image.width, max_pixels)
        if image.mode in SIXTEEN_BIT:  # convert("RGB") would clip 16-bit values to 0 or 255
            high = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return np.repeat(high[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


def decode_image(path: str, method: Decoder = "tf_fast", max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) tensor, naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        pixels = decode_jpeg(path, data, method, max_pixels) if data.startswith(JPEG_MAGIC) else None
        if pixels is None:
            pixels = decode_with_pillow(path, max_pixels)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}. Remove or replace the file.") from err
    if not pixels.flags.writeable:  # Pillow's arrays are read-only views
        pixels = pixels.copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)
