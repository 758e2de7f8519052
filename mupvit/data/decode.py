"""Image files to uint8 (3, H, W) tensors, JPEGs as big_vision decodes them.

big_vision decodes with TF's default DCT, libjpeg's fast integer IDCT (JDCT_IFAST, fancy upsampling on), both in
`decode` (tf.io.decode_image) and in the train op (tf.image.decode_and_crop_jpeg). libjpeg-turbo's fast IDCT,
reached through simplejpeg, gives TF's pixels exactly (0 grey levels apart on 12 ImageNet-like JPEGs, measured
against TF 2.21) and decodes in about 0.6x Pillow's time. `accurate` is the ISLOW IDCT: Pillow's pixels, and
big_vision's `decode(precise=True)`. libjpeg-turbo also converts grey and CMYK JPEGs to RGB (CMYK within 1 level of
Pillow's conversion); other formats (PNG, ...) and any JPEG it refuses go through Pillow, converted to RGB.
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


def decode_jpeg(data: bytes, method: Decoder) -> np.ndarray | None:
    """(H, W, 3) uint8 through libjpeg-turbo, or None when it cannot convert this JPEG to RGB (e.g. CMYK)."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=method == "tf_fast", fastupsample=False)
    except ValueError:
        return None


def decode_with_pillow(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def decode_image(path: str, method: Decoder = "tf_fast") -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) tensor, naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        pixels = decode_jpeg(data, method) if data.startswith(JPEG_MAGIC) else None
        if pixels is None:
            pixels = decode_with_pillow(path)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}. Remove or replace the file.") from err
    if not pixels.flags.writeable:  # Pillow's arrays are read-only views
        pixels = pixels.copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)
