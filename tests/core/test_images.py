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


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """`png` with one more chunk right after IHDR."""
    import struct
    import zlib

    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    return png[:33] + chunk + png[33:]


def _pillow_pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_plain_rgb_pngs_take_libspng_and_give_pillows_exact_pixels(level):
    # random pixels and smooth gradients make the encoder pick every row filter
    import io

    from PIL import Image

    rng = np.random.default_rng(level)
    noise = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    ramp = (np.cumsum(rng.integers(0, 4, size=(8, 8, 3)), axis=1) % 256).astype(np.uint8)
    for pixels in (noise, ramp):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
        data = buffer.getvalue()
        assert images._plain_png(data, 8, 8) is not None
        image = decode(data)
        assert (image.format, image.mode, image.original_size) == ("PNG", "RGB", (8, 8))
        got = np.rint(image.array * 255).astype(np.uint8)
        np.testing.assert_array_equal(got, pixels.transpose(2, 0, 1))


@pytest.mark.parametrize(
    "kind,body",
    [(b"gAMA", (100_000).to_bytes(4, "big")), (b"sRGB", b"\0"), (b"tRNS", b"\0\1\0\2\0\3")],
)
def test_libspng_applies_no_gamma_or_transparency_just_as_pillow(kind, body):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    data = _with_chunk(encode(pixels), kind, body)
    fast = images._plain_png(data, 8, 8)
    assert fast is not None
    np.testing.assert_array_equal(fast, _pillow_pixels(data))
    np.testing.assert_array_equal(fast, pixels)


def test_other_pngs_and_damaged_ones_are_left_to_pillow():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    rgb = encode(pixels)
    assert images._plain_png(rgb, 8, 8) is not None
    assert images._plain_png(rgb, 16, 16) is None  # another size: refused or resized by Pillow
    assert images._plain_png(encode(pixels, mode="RGBA"), 8, 8) is None
    assert images._plain_png(encode(pixels, mode="L"), 8, 8) is None
    assert images._plain_png(encode(pixels[..., 0].astype(np.uint16) * 200), 8, 8) is None
    assert images._plain_png(encode(pixels, "BMP"), 8, 8) is None
    damaged = bytearray(rgb)
    damaged[-20] ^= 0xFF  # inside IDAT (or its CRC): libspng refuses, Pillow says why
    assert images._plain_png(bytes(damaged), 8, 8) is None
    with pytest.raises(images.ImageError):
        decode(bytes(damaged))
    assert images._plain_png(rgb[:-12], 8, 8) is None  # no IEND


def test_no_damaged_png_is_decoded_by_libspng_where_pillow_refuses_it():
    rng = np.random.default_rng(3)
    rgb = encode(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    accepted = 0
    for pos in range(8, len(rgb)):  # every byte after the signature, flipped
        damaged = bytearray(rgb)
        damaged[pos] ^= 0xFF
        fast = images._plain_png(bytes(damaged), 8, 8)
        if fast is None:
            continue
        accepted += 1
        np.testing.assert_array_equal(fast, _pillow_pixels(bytes(damaged)))
    assert accepted < len(rgb) // 4  # most damage breaks a CRC and goes to Pillow
