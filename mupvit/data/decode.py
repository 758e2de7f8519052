"""Image files to uint8 (3, H, W) tensors, JPEGs as big_vision decodes them.

big_vision decodes with TF's default DCT, libjpeg's fast integer IDCT (JDCT_IFAST, fancy upsampling on), both in
`decode` (tf.io.decode_image) and in the train op (tf.image.decode_and_crop_jpeg). libjpeg-turbo's fast IDCT,
reached through simplejpeg, gives TF's pixels exactly (0 grey levels apart on 12 ImageNet-like JPEGs, measured
against TF 2.21) and decodes in about 0.6x Pillow's time. `accurate` is the ISLOW IDCT: Pillow's pixels, and
big_vision's `decode(precise=True)`. libjpeg-turbo also converts grey and CMYK JPEGs to RGB (CMYK within 1 level of
Pillow's conversion); other formats (PNG, ...) and any JPEG it refuses go through Pillow, converted to RGB.

So a good JPEG never needs Pillow: one that libjpeg-turbo refuses (strictly: a libjpeg warning such as "Corrupt
JPEG data: 497 extraneous bytes before marker 0xd9" is a refusal) but Pillow decodes is corrupt data recovered,
with Pillow's guesses and IDCT, not TF's pixels. `decode_noting` returns libjpeg-turbo's reason for such a file,
so the run and `mupvit.data.check` can name and count it; a JPEG neither reads is a bad image.

The policy for other images, as TF's decode_image(channels=3) treats them: 16-bit images are scaled to 8 bits
(the high byte), alpha is dropped (not composited), palette, 1-bit and CMYK images are converted to RGB. An image of
more than `max_pixels` pixels is refused from its header, before any decoding, naming the file (the default cap,
50 MP, is 4x ImageNet's largest).
"""

from __future__ import annotations

import contextlib
import io
from typing import Literal, NamedTuple

import numpy as np
import simplejpeg
import torch
from PIL import Image

from mupvit.data.cache import ReadThroughCache
from mupvit.data.datasets import DataError
from mupvit.urls import URL

Decoder = Literal["tf_fast", "accurate"]
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS = 50_000_000
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}


def check_size(path: str, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DataError(f"image {path} is {width}x{height} = {height * width / 1e6:.1f} MP, above the cap of "
                        f"{max_pixels / 1e6:g} MP; shrink the file (or remove it)")


class Decoded(NamedTuple):
    """An image's pixels, uint8 (3, H, W), and, for a JPEG that libjpeg-turbo refused and Pillow decoded, why."""

    pixels: torch.Tensor
    recovered: str | None


def decode_jpeg(path: str, data: bytes, method: Decoder, max_pixels: int) -> np.ndarray | str:
    """(H, W, 3) uint8 through libjpeg-turbo, or its reason for refusing this JPEG (Pillow then tries)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as err:
        return str(err)
    check_size(path, height, width, max_pixels)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=method == "tf_fast", fastupsample=False)
    except ValueError as err:
        return str(err)


def decode_with_pillow(path: str, max_pixels: int = MAX_PIXELS, data: bytes | None = None) -> np.ndarray:
    """Pillow's decode of the file at `path`, or of `data` (its bytes, already read) when given."""
    try:
        opened = Image.open(path if data is None else io.BytesIO(data))
    except Image.UnidentifiedImageError:  # Pillow's text names the BytesIO; ours names the file, as before
        raise Image.UnidentifiedImageError(f"cannot identify image file {path!r}") from None
    with opened as image:
        check_size(path, image.height, image.width, max_pixels)
        if image.mode in SIXTEEN_BIT:  # convert("RGB") would clip 16-bit values to 0 or 255
            high = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return np.repeat(high[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


def read_object_cached(url: str, cache: ReadThroughCache | None = None) -> bytes:
    """An object's bytes from the node's cache, else from its bucket (with retries; then cached). A cache that
    cannot be written (full disk) is passed by: the bytes read are good."""
    from mupvit.data.manifest import hint_for
    from mupvit.data.storage import read_object

    if cache is not None and (data := cache.get(url)) is not None:
        return data
    data = read_object(url, hint_for(url))
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.put(url, data)
    return data


def decode_noting(path: str, method: Decoder = "tf_fast", max_pixels: int = MAX_PIXELS,
                  cache: ReadThroughCache | None = None) -> Decoded:
    """Decode an image file (or object: `path` may be a URL, read through `cache`), naming the file when it cannot
    be read, and noting a JPEG recovered by Pillow."""
    refused = None
    data = read_object_cached(path, cache) if URL.match(path) else None
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        pixels = decode_jpeg(path, data, method, max_pixels) if data.startswith(JPEG_MAGIC) else None
        if not isinstance(pixels, np.ndarray):
            refused, pixels = pixels, decode_with_pillow(path, max_pixels, data)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}. Remove or replace the file.") from err
    if not pixels.flags.writeable:  # Pillow's arrays are read-only views
        pixels = pixels.copy()
    return Decoded(torch.from_numpy(pixels).permute(2, 0, 1), refused)


def decode_image(path: str, method: Decoder = "tf_fast", max_pixels: int = MAX_PIXELS,
                 cache: ReadThroughCache | None = None) -> torch.Tensor:
    """Decode an image file (or object) to a uint8 (3, H, W) tensor, naming the file when it cannot be read."""
    return decode_noting(path, method, max_pixels, cache).pixels
