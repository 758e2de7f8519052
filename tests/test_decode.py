"""JPEG decoding as big_vision does it (mupvit/data/decode.py): `tf_fast` is libjpeg's fast integer IDCT (TF's
default, the pixels big_vision trains and evaluates on), `accurate` the ISLOW IDCT (Pillow's pixels, big_vision's
decode(precise=True)); other formats go through Pillow."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from PIL import Image

from mupvit.config import DataConfig, config_from_dict
from mupvit.data import decoder
from mupvit.data.datasets import DataError
from mupvit.data.decode import decode_image, decode_noting

from .helpers import corrupt_jpeg

# A 16x16 photo-like JPEG (quality 75, 4:2:0) fixed here, so the reference pixels below cannot drift with the
# encoder of whatever Pillow is installed.
TINY_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAx"
    "NDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgyIRwhMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIy"
    "MjIyMjIyMjL/wAARCAAQABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUF"
    "BAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVW"
    "V1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi"
    "4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAEC"
    "AxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVm"
    "Z2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq"
    "8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDzfTfD7ear43cfwr654/Sut0/Q3jDvFFkgHhhjac+v+eMfh0lhoJVRiMLvPypwDk/0rsNO"
    "0HAC7PlPVlJAGfT15xzx+lFKq76CyLPlpqf/2Q=="
)
# Its pixels under the fast IDCT (TF's default decode: simplejpeg fastdct matched TF 2.21 to 0 levels on 12 JPEGs).
FAST_SUM, FAST_ROW0 = 91200, [[5, 9, 10], [10, 8, 11], [23, 10, 17], [30, 2, 14]]


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.jpg"
    path.write_bytes(TINY_JPEG)
    return str(path)


def pillow(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def test_tf_fast_gives_the_fixed_reference_pixels(tiny):
    fast = decode_image(tiny, "tf_fast")
    assert fast.shape == (3, 16, 16) and fast.dtype == torch.uint8
    assert int(fast.sum()) == FAST_SUM
    assert fast[:, 0, :4].T.tolist() == FAST_ROW0
    assert DataConfig().decode == "tf_fast"


def test_accurate_is_pillows_decode_and_fast_differs_from_it_as_tf_does(tiny):
    accurate, fast = decode_image(tiny, "accurate"), decode_image(tiny, "tf_fast")
    assert torch.equal(accurate, pillow(tiny))
    diff = fast.int() - accurate.int()
    assert 1 <= diff.abs().max() <= 8  # docs/RECIPE.md: max 5-8 levels on ImageNet-sized images
    assert (diff != 0).float().mean() > 0.3
    assert diff.float().mean() < -0.3  # the accurate IDCT decodes brighter (~0.8 levels on average)


@pytest.mark.parametrize("mode, suffix", [("L", ".jpg"), ("RGB", ".png"), ("CMYK", ".jpg"), ("P", ".png")])
def test_other_images_come_out_as_rgb_like_pillows_conversion(tmp_path, mode, suffix):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    path = tmp_path / f"x{suffix}"
    image.save(path)
    out = decode_image(str(path), "tf_fast")
    assert out.shape == (3, 12, 10) and out.dtype == torch.uint8
    if mode == "L":  # a grey JPEG through libjpeg-turbo: three equal channels
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    elif mode == "CMYK":  # libjpeg-turbo's CMYK -> RGB: within a grey level of Pillow's (accurate IDCT)
        assert (decode_image(str(path), "accurate").int() - pillow(str(path)).int()).abs().max() <= 1
    else:  # PNGs: Pillow's conversion
        assert torch.equal(out, pillow(str(path)))


def test_a_broken_file_names_itself(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(TINY_JPEG[:100])
    with pytest.raises(DataError, match=f"cannot decode image {path}"):
        decode_image(str(path))


def test_the_loaders_decode_with_the_configured_method(tiny):
    for method in ("tf_fast", "accurate"):
        cfg = config_from_dict({"data": {"dataset": "digits", "decode": method},
                                "train": {"total_steps": 20000, "epochs": None}})
        assert torch.equal(decoder(cfg)(tiny), decode_image(tiny, method))
    with pytest.raises(Exception, match="data.decode: got 'pil'"):
        config_from_dict({"data": {"dataset": "digits", "decode": "pil"}, "train": {"total_steps": 20000}})


def test_a_16_bit_png_keeps_its_levels_as_the_high_byte(tmp_path):
    levels = (np.arange(16 * 64, dtype=np.uint16).reshape(16, 64) * 64)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode == "I;16"
    out = decode_image(str(path))
    assert torch.equal(out[0], torch.from_numpy((levels >> 8).astype(np.uint8)))
    assert len(torch.unique(out)) == 256  # Pillow's convert("RGB") would have left only 0 and 255


def test_rgba_drops_alpha_like_tf(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)
    assert torch.equal(decode_image(str(path)), torch.from_numpy(pixels[:, :, :3].copy()).permute(2, 0, 1))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_an_image_above_the_pixel_cap_is_refused_from_its_header(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    Image.new("RGB", (300, 200), (9, 9, 9)).save(path)
    with pytest.raises(DataError, match=rf"image {path} is 300x200 = 0.1 MP, above the cap of 0.05 MP"):
        decode_image(str(path), max_pixels=50_000)
    assert decode_image(str(path), max_pixels=60_000).shape == (3, 200, 300)


@pytest.mark.parametrize("kind", ["progressive", "cmyk", "grey", "png"])
def test_sound_images_of_every_kind_are_not_noted_as_recovered(tmp_path, kind):
    """libjpeg-turbo reads progressive, CMYK and grey JPEGs; Pillow's other formats are no fallback either."""
    image = Image.fromarray((np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8))
    path = tmp_path / ("x.png" if kind == "png" else "x.jpg")
    {"progressive": lambda: image.save(path, progressive=True), "cmyk": lambda: image.convert("CMYK").save(path),
     "grey": lambda: image.convert("L").save(path), "png": lambda: image.save(path)}[kind]()
    assert decode_noting(str(path)).recovered is None


def test_corrupt_jpeg_data_is_decoded_by_pillow_and_noted(tmp_path):
    path = corrupt_jpeg(tmp_path / "corrupt.jpg")
    pixels, refused = decode_noting(str(path))
    assert refused == "Corrupt JPEG data: 496 extraneous bytes before marker 0xd9"
    assert torch.equal(pixels, pillow(str(path))) and torch.equal(decode_image(str(path)), pixels)
