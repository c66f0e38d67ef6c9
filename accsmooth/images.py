"""Bytes -> model input: decode, validate and convert one image to float32 [3,H,W] in [0,1].

Only PNG, JPEG, WebP and BMP are decoded, straight from the request bytes: by Pillow, except an
intact 8-bit RGB PNG of the model's size, the common request, which libspng decodes to the same
pixels in half the time (`_plain_png`). The image size is read from the header and checked
before any pixel is decoded, so decompression bombs and wrong sizes cost microseconds.
Conversions, all to RGB:
  - grayscale (L, 1) is replicated to three channels;
  - 16-bit grayscale (I;16, I) is scaled by 1/65535, not clipped at 255;
  - palette (P) images are expanded through their palette;
  - an alpha channel (RGBA, LA, PA) is dropped: pixels are used as stored, not composited;
  - CMYK / YCbCr JPEGs are converted by Pillow. EXIF orientation is ignored.
With `resize=True` an image of another size is resized (bilinear) to the model's H x W, and the
certified radius then lives in that resized model-input space, not in the uploaded pixels.

Every refusal is an `ImageError` of its own kind, with a message for whoever sent the image;
callers answer each kind their own way (the server: an HTTP status and error code).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libspng: the server's extra installs it; without it every PNG goes through Pillow
    from pyspng import _pyspng_c as spng
except ImportError:  # pragma: no cover - an install without the server extra
    spng = None

FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAGIC = {PNG_SIGNATURE: "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP"}
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC: every whole PNG has it
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_SCALE = np.float32(1.0 / 255.0)


class ImageError(ValueError):
    """An image that cannot be model input; the message says why."""


class EmptyImage(ImageError):
    """No bytes at all."""


class NotAnImage(ImageError):
    """Bytes of no image format Pillow knows."""


class UnsupportedImageFormat(ImageError):
    """An image, but not PNG, JPEG, WebP or BMP."""


class TruncatedImage(ImageError):
    """A supported format whose data ends early."""


class CorruptImage(ImageError):
    """A supported format whose data cannot be decoded."""


class DecompressionBomb(ImageError):
    """More pixels than Pillow's own guard allows."""


class TooManyPixels(DecompressionBomb):
    """More pixels than the caller's `max_pixels`, read from the header."""


class WrongImageSize(ImageError):
    """Not the model's size, and resizing was not asked for."""


@dataclass(frozen=True)
class DecodedImage:
    """A model-ready image and where it came from."""

    array: np.ndarray  # float32 [3, H, W], C-contiguous, values in [0, 1]
    format: str  # PNG, JPEG, WEBP or BMP
    mode: str  # Pillow mode before conversion (RGB, L, RGBA, P, I;16, ...)
    original_size: tuple[int, int]  # (width, height) as uploaded
    resized: bool


def sniff(data: bytes) -> str | None:
    """The supported format that `data`'s magic bytes claim, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in MAGIC.items() if data.startswith(magic)), None)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header alone; None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            return img.size
    except Exception:  # noqa: BLE001 - decode_image explains what is wrong
        return None


def _open(data: bytes) -> Image.Image:
    """Open lazily (header only), restricted to FORMATS; specific errors for everything else."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        pass
    except Image.DecompressionBombError as exc:
        raise DecompressionBomb(f"image rejected as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _broken(sniff(data), exc) from exc
    claimed = sniff(data)
    if claimed:  # right signature, unreadable header: cut short or damaged
        raise TruncatedImage(
            f"the {claimed} signature is there but the header could not be parsed:"
            " the file is truncated or damaged"
        )
    try:
        other = Image.open(io.BytesIO(data))
        found = other.format
    except Exception:  # noqa: BLE001 - anything Pillow cannot identify is "not an image"
        found = None
    if found:
        raise UnsupportedImageFormat(
            f"{found} images are not supported; send PNG, JPEG, WebP or BMP"
        )
    raise NotAnImage(
        f"the body ({len(data)} bytes) is not an image: no PNG, JPEG, WebP or BMP signature"
    )


def _broken(fmt: str | None, exc: BaseException) -> Exception:
    what = f"{fmt} image" if fmt else "image"
    message = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in message.lower():
        return TruncatedImage(f"the {what} is truncated: its data ends early ({message})")
    return CorruptImage(f"the {what} could not be decoded: {message}")


def _to_rgb_array(img: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """Float32 [3,H,W] in [0,1]; `size` (w, h) resizes first, bilinearly."""
    if img.mode in _SIXTEEN_BIT:
        gray = img.convert("F") if size else img
        if size:
            gray = gray.resize(size, Image.Resampling.BILINEAR)
        plane = np.asarray(gray, dtype=np.float32) * np.float32(1.0 / 65535.0)
        return np.ascontiguousarray(np.broadcast_to(np.clip(plane, 0.0, 1.0), (3, *plane.shape)))
    if img.mode != "RGB":
        img = img.convert("RGBA" if img.mode in ("PA", "LA", "La") else "RGB").convert("RGB")
    if size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return _chw(np.asarray(img, dtype=np.uint8))


def _chunks_intact(data: bytes) -> bool:
    """Every chunk of the PNG `data` whole and matching its CRC, ending with IEND at the very
    end. libspng skips the CRCs that Pillow checks; with this check first, what libspng decodes
    is a PNG that Pillow decodes too (bar a deflate stream crafted to carry a wrong Adler-32
    under correct CRCs, which libspng decodes and Pillow refuses)."""
    pos, end = 8, len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        stop = pos + 12 + length
        if (
            stop > end
            or zlib.crc32(data[pos + 4 : stop - 4]) != struct.unpack_from(">I", data, stop - 4)[0]
        ):
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return stop == end
        pos = stop
    return False


def _plain_png(data: bytes, height: int, width: int) -> np.ndarray | None:
    """The uint8 [H,W,3] pixels of an intact 8-bit RGB, non-interlaced PNG of exactly the
    model's size, decoded by libspng (half of Pillow's time for a 32x32 image, the common
    request); None for anything else, or anything libspng refuses: Pillow then decodes it, or
    says what is wrong with it. Both decode such a PNG to the same bytes (no gamma applied)."""
    if spng is None or len(data) < 45 or not data.startswith(PNG_SIGNATURE):
        return None
    if data[12:16] != b"IHDR" or not _chunks_intact(data):
        return None
    w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (w, h, depth, color, interlace) != (width, height, 8, 2, 0):
        return None
    try:
        pixels = spng.spng_decode_image_bytes(data, spng.SPNG_FMT_RGB8)
    except Exception:  # noqa: BLE001 - Pillow's decoding names the problem
        return None
    return pixels if pixels.shape == (height, width, 3) else None


def _chw(hwc: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] -> float32 [3,H,W] in [0,1]."""
    out = np.empty((3, hwc.shape[0], hwc.shape[1]), dtype=np.float32)
    np.multiply(hwc.transpose(2, 0, 1), _SCALE, out=out)
    return out


def decode_image(
    data: bytes, height: int, width: int, *, resize: bool = False, max_pixels: int
) -> DecodedImage:
    """Decode `data` for a model taking [3, height, width]; an `ImageError` on any problem."""
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    plain = _plain_png(data, height, width)
    if plain is not None:
        return DecodedImage(_chw(plain), "PNG", "RGB", (width, height), False)
    img = _open(data)
    if img.format == "PNG" and PNG_END not in data[-1024:]:
        # Pillow decodes a PNG cut inside its last chunks without complaint; refuse it anyway
        raise TruncatedImage("the PNG image is truncated: it does not end with an IEND chunk")
    w, h = img.size
    if w * h > max_pixels:
        raise TooManyPixels(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    resized = (w, h) != (width, height)
    if resized and not resize:
        raise WrongImageSize(
            f"image is {w}x{h} (width x height), the model takes {width}x{height};"
            " send that size or pass resize=true"
        )
    mode = img.mode
    try:
        if resized and img.format == "JPEG":
            img.draft("RGB", (width, height))  # decode big JPEGs at a reduced scale
        img.load()
        array = _to_rgb_array(img, (width, height) if resized else None)
    except Image.DecompressionBombError as exc:
        raise DecompressionBomb(f"image rejected as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _broken(img.format, exc) from exc
    return DecodedImage(array, img.format or "?", mode, (w, h), resized)
