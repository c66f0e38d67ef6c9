"""Decoding image bytes: formats, conversions to RGB, size checks, and the specific error for
each kind of bad image."""

from __future__ import annotations

import numpy as np
import pytest

from accsmooth import images
from accsmooth.images import decode_image
from tests.server.helpers import encode, png_header_only, solid

LIMIT = 1_000_000


def decode(data: bytes, **kw):
    return decode_image(data, 8, 8, max_pixels=kw.pop("max_pixels", LIMIT), **kw)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_formats_decode_to_exact_pixels_in_unit_range(fmt):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    save = {"WEBP": lambda: encode_lossless_webp(pixels)}.get(fmt, lambda: encode(pixels, fmt))
    image = decode(save())
    assert image.array.shape == (3, 8, 8) and image.array.dtype == np.float32
    assert image.array.flags.c_contiguous and image.format == fmt
    np.testing.assert_allclose(image.array, pixels.transpose(2, 0, 1) / 255.0, atol=1e-6)


def encode_lossless_webp(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_jpeg_decodes_close_to_its_pixels():
    image = decode(solid(200, fmt="JPEG"))
    assert image.format == "JPEG"
    np.testing.assert_allclose(image.array, 200 / 255.0, atol=3 / 255)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_other_modes_are_converted_to_rgb(mode):
    gray = np.full((8, 8, 3), 255, dtype=np.uint8)
    image = decode(encode(gray, "PNG", mode=mode))
    assert image.mode == mode and image.array.shape == (3, 8, 8)
    np.testing.assert_allclose(image.array, 1.0, atol=1e-6)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.full((8, 8), 30_000, dtype=np.uint16)
    image = decode(encode(values, "PNG"))
    assert image.mode.startswith("I")
    np.testing.assert_allclose(image.array, 30_000 / 65_535, atol=1e-6)


def test_a_wrong_size_is_refused_with_both_sizes():
    with pytest.raises(images.WrongImageSize, match=r"image is 16x4 .*model takes 8x8"):
        decode(solid(10, size=(4, 16)))


def test_resize_brings_any_size_to_the_model_input():
    image = decode(solid(128, size=(20, 30), fmt="JPEG"), resize=True)
    assert image.resized and image.original_size == (30, 20) and image.array.shape == (3, 8, 8)
    np.testing.assert_allclose(image.array, 128 / 255.0, atol=3 / 255)


@pytest.mark.parametrize(
    "data,error,message",
    [
        (b"", images.EmptyImage, "empty"),
        (b"definitely not an image", images.NotAnImage, "not an image"),
        (solid(9)[:60], images.TruncatedImage, "PNG"),
        (solid(9, fmt="JPEG")[:200], images.TruncatedImage, "JPEG image is truncated"),
        (solid(9, fmt="BMP")[:-30], images.TruncatedImage, "BMP image is truncated"),
        (solid(9, fmt="GIF"), images.UnsupportedImageFormat, "GIF images are not supported"),
        (solid(9, fmt="TIFF"), images.UnsupportedImageFormat, "TIFF images are not supported"),
    ],
)
def test_each_bad_image_raises_its_own_error(data, error, message):
    with pytest.raises(error, match=message):
        decode(data)


def test_a_truncated_png_body_is_reported_as_truncated():
    data = encode(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(images.TruncatedImage, match="PNG image is truncated"):
        decode(data[: len(data) - 20])


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(images.TooManyPixels, match="5000x5000 = 25000000 pixels, over the limit"):
        decode(png_header_only(5000, 5000))


def test_pillows_own_bomb_guard_is_reported_as_a_bomb():
    with pytest.raises(images.DecompressionBomb, match="decompression bomb") as raised:
        decode(png_header_only(30_000, 30_000), max_pixels=10**10)
    assert raised.type is images.DecompressionBomb  # Pillow's guard, not our max_pixels
