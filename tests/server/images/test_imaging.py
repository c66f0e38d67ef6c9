"""Decoding uploads: formats, conversions to RGB, size checks, and the specific error for each
kind of bad image."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from server.http import errors
from server.images.imaging import decode_image
from tests.server.helpers import encode, solid

LIMIT = 1_000_000


def decode(data: bytes, **kw):
    return decode_image(data, 8, 8, max_pixels=kw.pop("max_pixels", LIMIT), **kw)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (incomplete) data stream."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


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
    with pytest.raises(errors.WrongImageSize, match=r"image is 16x4 .*model takes 8x8"):
        decode(solid(10, size=(4, 16)))


def test_resize_brings_any_size_to_the_model_input():
    image = decode(solid(128, size=(20, 30), fmt="JPEG"), resize=True)
    assert image.resized and image.original_size == (30, 20) and image.array.shape == (3, 8, 8)
    np.testing.assert_allclose(image.array, 128 / 255.0, atol=3 / 255)


@pytest.mark.parametrize(
    "data,error,message",
    [
        (b"", errors.EmptyBody, "empty"),
        (b"definitely not an image", errors.NotAnImage, "not an image"),
        (solid(9)[:60], errors.TruncatedImage, "PNG"),
        (solid(9, fmt="JPEG")[:200], errors.TruncatedImage, "JPEG image is truncated"),
        (solid(9, fmt="BMP")[:-30], errors.TruncatedImage, "BMP image is truncated"),
        (solid(9, fmt="GIF"), errors.UnsupportedImageFormat, "GIF images are not supported"),
        (solid(9, fmt="TIFF"), errors.UnsupportedImageFormat, "TIFF images are not supported"),
    ],
)
def test_each_bad_image_raises_its_own_error(data, error, message):
    with pytest.raises(error, match=message):
        decode(data)


def test_a_truncated_png_body_is_reported_as_truncated():
    data = encode(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(errors.TruncatedImage, match="PNG image is truncated"):
        decode(data[: len(data) - 20])


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(errors.DecompressionBomb, match="5000x5000 = 25000000 pixels"):
        decode(png_header_only(5000, 5000))


def test_pillows_own_bomb_guard_is_reported_as_a_bomb():
    with pytest.raises(errors.DecompressionBomb, match="decompression bomb"):
        decode(png_header_only(30_000, 30_000), max_pixels=10**10)
