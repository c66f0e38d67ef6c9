"""Plain helpers for the server tests (fixtures live in conftest.py): images, settings, metrics."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from server.settings import Settings

SHAPE = (3, 8, 8)
CLASSES = ("cat", "dog", "bird")
CALIBRATION = {
    "epsilon": 0.05,
    "shift": 0.02,
    "set_size": 200,
    "empirical_violation_rate": 0.04,
    "method": "split-conformal",
}


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """Encode an HxW(x3) uint8/uint16 array (or a value) as image bytes."""
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def solid(value: int, size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    """A solid RGB image of one 8-bit value, size (height, width)."""
    return encode(np.full((*size, 3), value, dtype=np.uint8), fmt)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (incomplete) data stream."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rehash(folder: Path) -> None:
    """Make the manifest's sha256 entries match the files again (after a deliberate edit)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"] = {
        f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in manifest["sha256"]
    }
    path.write_text(json.dumps(manifest))


def settings_for(models_dir: Path, **overrides) -> Settings:
    return Settings(models_dir=models_dir, providers=("CPUExecutionProvider",), **overrides)


def wait_ready(client: TestClient, timeout: float = 20.0) -> None:
    """Wait until loading has finished (ready or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.app.state.registry.loaded:
            return
        time.sleep(0.01)
    raise TimeoutError("bundles did not load")


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def post_image(client: TestClient, data: bytes, path: str = "/certify", ctype="image/png", **kw):
    return client.post(path, content=data, headers={"content-type": ctype}, **kw)


@contextlib.contextmanager
def tiny_server(root: Path, **env: str):
    """A real `python -m server` (uvicorn, `server.http.protocol`) on a free port serving the
    `tiny` test bundle written under `root`, CPU provider, one onnxruntime thread, `env` on top."""
    from loadtests.serve import ServerProcess
    from server.placeholder import write_bundle

    write_bundle(root / "models" / "tiny", classes=CLASSES, shape=SHAPE, calibration=CALIBRATION)
    env = {"ACCSMOOTH_PROVIDERS": "CPUExecutionProvider", "ACCSMOOTH_INTRA_OP_THREADS": "1"} | env
    with ServerProcess(root / "models", env=env, log_path=root / "server.log") as process:
        yield process
