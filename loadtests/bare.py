"""Bare onnxruntime rates of a bundle's graphs: the physical limit the HTTP figures are held to.

The sessions are built exactly as the server builds them (the fast path's session options for
the surrogate, the audits' for the base model, as `python -m server.settings` gives them: see
`loadtests.serve.server_settings`), on real CIFAR-10 images, so the ratio
"HTTP rate / bare rate" measures what the service costs on top of the model.

    python -m loadtests.bare models/cifar10-sigma0.25            # prints JSON
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from accsmooth.bundle import read_manifest
from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from loadtests.images import load_images
from loadtests.serve import server_settings

SURROGATE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def image_tensor(count: int, shape: tuple[int, int, int]) -> np.ndarray:
    """[count,3,H,W] float32 in [0,1]: real test images, decoded as the server decodes them."""
    _, h, w = shape
    arrays = []
    for image in load_images(limit=count, png_every=0):
        img = Image.open(io.BytesIO(image.data)).convert("RGB").resize((w, h))
        arrays.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(arrays)


def time_calls(predict: OnnxPredictor, x: np.ndarray, seconds: float) -> dict:
    """Call `predict(x)` back to back for about `seconds`; images/s and per-call ms."""
    for _ in range(3):  # warm-up: allocations, kernel choice
        predict(x)
    calls: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(calls) < 5:
        t0 = time.perf_counter()
        predict(x)
        calls.append(time.perf_counter() - t0)
    ms = np.asarray(calls) * 1000.0
    return {
        "batch": len(x),
        "images_per_s": round(len(x) * len(calls) / sum(calls), 1),
        "call_ms_p50": round(float(np.median(ms)), 4),
        "call_ms_p99": round(float(np.percentile(ms, 99)), 4),
        "calls": len(calls),
    }


def _batch(images: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(images))
    return np.ascontiguousarray(np.tile(images, (reps, 1, 1, 1))[:size])


def runtime_options(values: dict) -> RuntimeOptions:
    """`RuntimeOptions` from their JSON form (`server_settings()["fast_runtime"]`, ...)."""
    return RuntimeOptions(**values | {"providers": tuple(values["providers"])})


def surrogate_rates(
    bundle: Path,
    options: RuntimeOptions,
    seconds: float = 2.0,
    batches=SURROGATE_BATCHES,
    max_passes_per_call: int | None = None,
):
    """The surrogate's rate at each batch size, with the server's fast-path session `options`;
    with `max_passes_per_call` (the server's setting), only the batches the server would make:
    a probe graph's calls hold at most that many network passes (batch 1 always runs)."""
    manifest = read_manifest(bundle)
    predict = OnnxPredictor(make_session(bundle / manifest.graphs.surrogate.file, options))
    images = image_tensor(64, manifest.input.shape)
    if max_passes_per_call is not None:  # 512 probes at batch 256 would need tens of GB
        cap = manifest.images_within(max_passes_per_call)
        batches = [b for b in batches if b <= cap]
    rows = [time_calls(predict, _batch(images, b), seconds) for b in batches]
    best = max(rows, key=lambda r: r["images_per_s"])
    return {
        "options": _describe(options),
        "by_batch": rows,
        "batch_1": rows[0] if rows[0]["batch"] == 1 else None,
        "best": best,
    }


def base_rates(
    bundle: Path, options: RuntimeOptions, batch_size: int, seconds: float = 3.0
) -> dict:
    """The base model on noisy images at the audit batch size: with the audit sessions' `options`
    (their thread budget: ACCSMOOTH_SAMPLED_THREADS) and with every core."""
    manifest = read_manifest(bundle)
    rng = np.random.default_rng(0)
    x = _batch(image_tensor(64, manifest.input.shape), batch_size)
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(manifest.sigma)
    out = {}
    for label, each in (
        ("audit_threads", options),
        ("all_cores", replace(options, intra_op_threads=0)),
    ):
        predict = OnnxPredictor(make_session(bundle / manifest.graphs.base.file, each))
        out[label] = time_calls(predict, x, seconds) | {"options": _describe(each)}
    return out


def _describe(options: RuntimeOptions) -> dict:
    return {
        "intra_op_threads": options.intra_op_threads or "auto (one per core)",
        "inter_op_threads": options.inter_op_threads,
        "providers": list(options.providers),
    }


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "models/cifar10-sigma0.25")
    server = server_settings({"ACCSMOOTH_PROVIDERS": "CPUExecutionProvider"})
    report = {
        "surrogate": surrogate_rates(
            folder,
            runtime_options(server["fast_runtime"]),
            1.0,
            max_passes_per_call=server["settings"]["max_passes_per_call"],
        ),
        "base": base_rates(folder, runtime_options(server["sampled_runtime"]), 256, 1.0),
    }
    print(json.dumps(report, indent=1))
