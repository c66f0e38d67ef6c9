"""The server's side of decoding: each kind of bad image raises its own domain error, with
the core's message, the error's code and HTTP status (the decoding itself: tests/core)."""

from __future__ import annotations

import pytest

from accsmooth import images
from server.http import errors
from server.images.imaging import HTTP_ERRORS, decode_image
from tests.server.helpers import png_header_only, solid


def decode(data: bytes, **kw):
    return decode_image(data, 8, 8, max_pixels=kw.pop("max_pixels", 1_000_000), **kw)


def kinds(cls: type) -> set[type]:
    return {c for sub in cls.__subclasses__() for c in {sub} | kinds(sub)}


def test_every_kind_of_image_error_has_its_domain_error():
    assert kinds(images.ImageError) - {images.TooManyPixels} == set(HTTP_ERRORS)


@pytest.mark.parametrize(
    "data,error,status,message",
    [
        (b"", errors.EmptyBody, 400, "the image is empty"),
        (b"definitely not an image", errors.NotAnImage, 400, "not an image"),
        (solid(9)[:60], errors.TruncatedImage, 400, "PNG"),
        (solid(9, fmt="JPEG")[:200], errors.TruncatedImage, 400, "JPEG image is truncated"),
        (solid(9, fmt="GIF"), errors.UnsupportedImageFormat, 415, "GIF images are not supported"),
        (solid(10, size=(4, 16)), errors.WrongImageSize, 422, r"image is 16x4 .*model takes 8x8"),
    ],
)
def test_each_bad_image_raises_its_own_domain_error(data, error, status, message):
    with pytest.raises(error, match=message) as raised:
        decode(data)
    assert type(raised.value) is error and errors.status_of(raised.value) == status
    with pytest.raises(images.ImageError) as core:
        images.decode_image(data, 8, 8, max_pixels=1_000_000)
    assert raised.value.detail == str(core.value)


def test_too_many_pixels_is_a_bomb_that_names_the_setting():
    with pytest.raises(errors.DecompressionBomb) as raised:
        decode(png_header_only(5000, 5000))
    assert errors.status_of(raised.value) == 413
    assert raised.value.detail == (
        "image is 5000x5000 = 25000000 pixels, over the limit of 1000000"
        " (ACCSMOOTH_MAX_IMAGE_PIXELS)"
    )


def test_pillows_own_bomb_guard_is_a_bomb_too():
    with pytest.raises(errors.DecompressionBomb, match="decompression bomb"):
        decode(png_header_only(30_000, 30_000), max_pixels=10**10)
