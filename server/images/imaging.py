"""The core's image decoding (`accsmooth.images`), its refusals raised as the server's errors.

Each kind of `ImageError` becomes the domain error that `server.http.errors` answers with its
status and code, with the same message; a header over `max_pixels` names the setting to raise.
"""

from __future__ import annotations

from accsmooth import images
from accsmooth.images import DecodedImage
from server.http import errors

HTTP_ERRORS: dict[type[images.ImageError], type[errors.AccsmoothError]] = {
    images.EmptyImage: errors.EmptyBody,
    images.NotAnImage: errors.NotAnImage,
    images.UnsupportedImageFormat: errors.UnsupportedImageFormat,
    images.TruncatedImage: errors.TruncatedImage,
    images.CorruptImage: errors.CorruptImage,
    images.DecompressionBomb: errors.DecompressionBomb,
    images.WrongImageSize: errors.WrongImageSize,
}


def decode_image(
    data: bytes, height: int, width: int, *, resize: bool = False, max_pixels: int
) -> DecodedImage:
    """`accsmooth.images.decode_image`, raising the server's domain error on any problem."""
    try:
        return images.decode_image(data, height, width, resize=resize, max_pixels=max_pixels)
    except images.TooManyPixels as exc:
        raise errors.DecompressionBomb(f"{exc} (ACCSMOOTH_MAX_IMAGE_PIXELS)") from exc
    except images.ImageError as exc:
        raise HTTP_ERRORS[type(exc)](str(exc)) from exc
