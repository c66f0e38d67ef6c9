"""Monte-Carlo sampling under Gaussian noise: SAMPLEUNDERNOISE and CERTIFY of Cohen et al.

`predict` is any callable from a float32 batch [B,3,H,W] to scores [B,K] (an onnxruntime session
of the base classifier in practice). Noise is drawn in [0,1]-pixel space, batch by batch into one
reused buffer, so memory is flat in n: n = 100,000 costs the same memory as n = 1,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from accsmooth.smoothing import Certificate, certify_from_counts

Predict = Callable[[np.ndarray], np.ndarray]


def sample_counts(
    predict: Predict,
    images: np.ndarray,
    num: int,
    sigma: float,
    num_classes: int,
    batch_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Counts [M, K]: how often f(x_i + N(0, sigma^2 I)) names each class, over `num` draws each.

    `images` is [M,3,H,W] (or one image [3,H,W], giving [K]). A batch holds noisy copies of as
    many images as fit in `batch_size` (all copies of a small image set share a batch when
    `num` is small, as in training-target labelling).
    """
    single = images.ndim == 3
    images = images[None] if single else images
    m = len(images)
    counts = np.zeros((m, num_classes), dtype=np.int64)
    total = m * num  # draw j belongs to image j // num
    buffer = np.empty((min(batch_size, total), *images.shape[1:]), dtype=np.float32)
    for start in range(0, total, len(buffer)):
        who = np.arange(start, min(start + len(buffer), total)) // num
        batch = buffer[: len(who)]
        rng.standard_normal(out=batch, dtype=np.float32)
        batch *= np.float32(sigma)
        batch += images[who]
        labels = np.asarray(predict(batch)).argmax(axis=1)
        np.add.at(counts, (who, labels), 1)
    return counts[0] if single else counts


@dataclass(frozen=True)
class MonteCarloResult:
    """A CERTIFY run: the certificate and the evidence it was computed from."""

    certificate: Certificate
    counts0: np.ndarray  # [K] selection counts (n0 draws) that chose cA
    counts: np.ndarray  # [K] estimation counts (n draws) that bound pA


def certify(
    predict: Predict,
    image: np.ndarray,
    *,
    sigma: float,
    num_classes: int,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    rng: np.random.Generator,
) -> MonteCarloResult:
    """Cohen et al.'s CERTIFY on one image [3,H,W]: pick cA with n0 draws, bound pA with n fresh."""
    counts0 = sample_counts(predict, image, n0, sigma, num_classes, batch_size, rng)
    counts = sample_counts(predict, image, n, sigma, num_classes, batch_size, rng)
    return MonteCarloResult(certify_from_counts(counts0, counts, alpha, sigma), counts0, counts)


def certify_given_class(
    predict: Predict,
    image: np.ndarray,
    guess: int,
    *,
    sigma: float,
    num_classes: int,
    n: int,
    alpha: float,
    batch_size: int,
    rng: np.random.Generator,
) -> MonteCarloResult:
    """CERTIFY with cA fixed beforehand (e.g. the surrogate's class) instead of picked by n0 draws.

    CERTIFY's guarantee needs only that cA is chosen independently of the n estimation draws;
    a class named by another model from the clean image is, so all the budget goes to bounding
    pA. `counts0` of the result is the one-hot guess.
    """
    counts0 = np.zeros(num_classes, dtype=np.int64)
    counts0[guess] = 1
    counts = sample_counts(predict, image, n, sigma, num_classes, batch_size, rng)
    return MonteCarloResult(certify_from_counts(counts0, counts, alpha, sigma), counts0, counts)


def measure_throughput(
    predict: Predict,
    shape: tuple[int, ...],
    *,
    sigma: float,
    num_classes: int,
    batch_size: int,
    seconds: float = 0.1,
    max_batches: int = 10,
) -> float:
    """Noisy samples per second of SAMPLEUNDERNOISE (noise, forward pass, counting) on this
    machine: one warm batch, then batches until `seconds` (at least two, at most `max_batches`)."""
    image = np.full(shape, 0.5, dtype=np.float32)
    rng = np.random.default_rng(0)
    sample_counts(predict, image, batch_size, sigma, num_classes, batch_size, rng)
    done, started = 0, time.perf_counter()
    while done < 2 * batch_size or (
        time.perf_counter() - started < seconds and done < max_batches * batch_size
    ):
        sample_counts(predict, image, batch_size, sigma, num_classes, batch_size, rng)
        done += batch_size
    return done / max(time.perf_counter() - started, 1e-9)


SAFETY = 0.8  # keep a fifth of the budget for queueing, the surrogate pass and the answer
MIN_N0, MIN_N = 10, 100  # below these CERTIFY cannot certify anything at usual alphas


def fallback_samples(
    budget_ms: float, samples_per_second: float, protocol_n0: int, protocol_n: int
) -> tuple[int, int]:
    """(n0, n) of a fallback CERTIFY that fits `budget_ms` at `samples_per_second`."""
    total = int(budget_ms / 1000.0 * samples_per_second * SAFETY)
    n0 = min(protocol_n0, max(MIN_N0, total // 20))
    return n0, min(protocol_n, max(MIN_N, total - n0))
