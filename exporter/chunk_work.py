"""The Monte-Carlo work of one chunk, as an executor's worker runs it.

`label_chunk` is one chunk of the targets stage (N noisy draws per training image, plus the
adaptive extra draws); `certify_chunk` is CERTIFY on a few consecutive images (calibrate,
evaluate and hybrid's ground truth). Both take `predict` (the worker's onnxruntime session of
the base model) first and only plain arrays and numbers after it, so a chunk can run in this
process, in a process pool or on a Ray node.

The random streams are those of the stages before executors existed: `default_rng([seed,
chunk index])` for a targets chunk, `default_rng([seed, image index])` per CERTIFY image. A
chunk's counts therefore depend on its seed and inputs only, never on which worker ran it.
This module imports numpy and `accsmooth.sampling` only (no torch), so a worker starts fast.
"""

from __future__ import annotations

import time

import numpy as np

from accsmooth.sampling import Predict, certify, sample_counts


def to_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [M,3,H,W] -> float32 in [0,1] (as `exporter.data.to_float`, which imports PIL)."""
    return images_uint8.astype(np.float32) / np.float32(255.0)


def label_chunk(
    predict: Predict,
    images_uint8: np.ndarray,
    *,
    index: int,
    seed: int,
    sigma: float,
    num_classes: int,
    num_samples: int,
    extra_samples: int,
    confident_fraction: float,
    batch_size: int,
) -> tuple[np.ndarray, int]:
    """Counts [M, K] of one targets chunk and the number of noisy samples drawn for it.

    Every image gets `num_samples` draws; one whose top class took at least
    `confident_fraction` of them gets `extra_samples` more, from the same stream.
    """
    x = to_float(images_uint8)
    rng = np.random.default_rng([seed, index])

    def draw(rows, num):
        return sample_counts(predict, x[rows], num, sigma, num_classes, batch_size, rng)

    return adaptive_counts(draw, num_samples, extra_samples, confident_fraction)


def adaptive_counts(
    draw, num_samples: int, extra_samples: int, confident_fraction: float
) -> tuple[np.ndarray, int]:
    """Adaptive N, whichever sampler draws: `draw(rows, num)` -> counts [len(rows), K] (numpy)
    of `num` noisy draws for the chunk's images `rows` (a slice or a boolean mask). Every image
    gets `num_samples` draws; one whose top class took at least `confident_fraction` of them
    gets `extra_samples` more. Returns (counts [M, K], draws made)."""
    counts = draw(slice(None), num_samples)
    drawn = len(counts) * num_samples
    if extra_samples:
        confident = counts.max(1) >= confident_fraction * num_samples
        if confident.any():
            counts[confident] += draw(confident, extra_samples)
        drawn += int(confident.sum()) * extra_samples
    return counts, drawn


def certify_chunk(
    predict: Predict,
    images_uint8: np.ndarray,
    *,
    first: int,
    seed: int,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """CERTIFY on images `first`, `first + 1`, ...: counts0 [M,K], counts [M,K], seconds [M].

    Image `first + j` draws from `default_rng([seed, first + j])`; seconds is the wall time of
    each image's CERTIFY in its worker.
    """
    x = to_float(images_uint8)
    k = predict(x[:1]).shape[1]
    rows = []
    for j, image in enumerate(x):
        t0 = time.perf_counter()
        r = certify(
            predict,
            image,
            sigma=sigma,
            num_classes=k,
            n0=n0,
            n=n,
            alpha=alpha,
            batch_size=batch_size,
            rng=np.random.default_rng([seed, first + j]),
        )
        rows.append((r.counts0, r.counts, time.perf_counter() - t0))
    return {
        "counts0": np.stack([r[0] for r in rows]),
        "counts": np.stack([r[1] for r in rows]),
        "seconds": np.array([r[2] for r in rows]),
    }
