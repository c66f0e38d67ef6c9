"""Request images for the load tests and benchmarks: real CIFAR-10 pictures, as the bytes a
client would upload.

The images come from an ImageFolder (`<root>/<class>/<file>`, or `<root>/test/<class>/<file>`):
the shared CIFAR-10 copy by default, any other one through `ACCSMOOTH_LOAD_IMAGES`. Every
other image is re-encoded as PNG (lossless, the format of the /certify latency goal), the rest
are sent as the original JPEG bytes, so both decoders are exercised.

    from loadtests.images import load_images
    images = load_images(limit=200)       # [LoadImage(name, bytes, content_type, label)]
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ENV_VAR = "ACCSMOOTH_LOAD_IMAGES"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "test"
SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class LoadImage:
    """One upload: its bytes, content type and the folder (class) it came from."""

    name: str
    data: bytes
    content_type: str
    label: str


def image_root(root: str | os.PathLike | None = None) -> Path:
    """The ImageFolder to read: the argument, else $ACCSMOOTH_LOAD_IMAGES, else CIFAR-10 test."""
    path = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT)
    if (path / "test").is_dir():
        path = path / "test"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no image folder; set {ENV_VAR} to an ImageFolder (<root>/<class>/<image>)"
        )
    return path


def _png(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def load_images(
    root: str | os.PathLike | None = None, *, limit: int = 200, png_every: int = 2
) -> list[LoadImage]:
    """Up to `limit` images, taken round-robin over the classes so every class is present;
    every `png_every`-th one re-encoded as PNG (1: all PNG, 0: none)."""
    folder = image_root(root)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    files = {
        c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in SUFFIXES) for c in classes
    }
    images: list[LoadImage] = []
    for i in range(max((len(v) for v in files.values()), default=0)):
        for label, paths in files.items():
            if i >= len(paths) or len(images) >= limit:
                continue
            path = paths[i]
            data = path.read_bytes()
            ctype = SUFFIXES[path.suffix.lower()]
            if png_every and len(images) % png_every == 0 and ctype != "image/png":
                data, ctype = _png(data), "image/png"
            images.append(LoadImage(f"{label}/{path.name}", data, ctype, label))
        if len(images) >= limit:
            break
    if not images:
        raise FileNotFoundError(f"{folder}: no .jpg/.jpeg/.png images under its class folders")
    return images
