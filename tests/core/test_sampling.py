"""Monte-Carlo CERTIFY on a base model whose class probabilities under noise are known exactly.

The probe model predicts class 0 iff x_p + sigma * z > t, so P(class 0) = Phi((x_p - t)/sigma).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from accsmooth.sampling import (
    MIN_N,
    MIN_N0,
    SAFETY,
    certify,
    certify_given_class,
    fallback_samples,
    sample_counts,
)
from accsmooth.smoothing import clopper_pearson_lower, radius_from_p_lower

SIGMA, THRESHOLD, VALUE = 0.25, 0.5, 0.6


@pytest.fixture
def probe(make_bundle) -> OnnxPredictor:
    folder = make_bundle()  # base: probe on pixel 0 with threshold 1/2
    options = RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
    return OnnxPredictor(make_session(folder / "base.onnx", options))


def image() -> np.ndarray:
    x = np.full((3, 8, 8), 0.2, dtype=np.float32)
    x[0, 0, 0] = VALUE
    return x


def test_counts_match_the_known_class_probability(probe):
    n = 20_000
    p0 = norm.cdf((VALUE - THRESHOLD) / SIGMA)
    counts = sample_counts(probe, image(), n, SIGMA, 3, 1000, np.random.default_rng(0))
    assert counts.sum() == n and counts[2] == 0  # ties between 0-logits go to class 1
    assert abs(counts[0] - n * p0) < 5 * np.sqrt(n * p0 * (1 - p0))


def test_certify_bounds_the_true_probability_from_below(probe):
    p0 = norm.cdf((VALUE - THRESHOLD) / SIGMA)
    result = certify(
        probe,
        image(),
        sigma=SIGMA,
        num_classes=3,
        n0=100,
        n=20_000,
        alpha=0.001,
        batch_size=1000,
        rng=np.random.default_rng(1),
    )
    cert = result.certificate
    assert cert.predicted_class == 0
    assert cert.p_a_lower == pytest.approx(clopper_pearson_lower(result.counts[0], 20_000, 0.001))
    assert p0 - 0.03 < cert.p_a_lower < p0
    assert cert.radius == pytest.approx(radius_from_p_lower(cert.p_a_lower, SIGMA))


def test_noise_is_streamed_in_batches_no_larger_than_batch_size(probe):
    sizes = []

    def spy(batch):
        sizes.append(len(batch))
        return probe(batch)

    sample_counts(spy, image(), 1_050, SIGMA, 3, 100, np.random.default_rng(0))
    assert max(sizes) == 100 and sum(sizes) == 1_050


def test_the_same_seed_reproduces_the_same_counts(probe):
    def run(seed):
        return certify(
            probe,
            image(),
            sigma=SIGMA,
            num_classes=3,
            n0=50,
            n=2_000,
            alpha=0.001,
            batch_size=256,
            rng=np.random.default_rng(seed),
        )

    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.counts0, b.counts0)
    assert not np.array_equal(a.counts, c.counts)


def test_certify_given_class_bounds_the_guessed_class_with_every_sample(probe):
    p0 = norm.cdf((VALUE - THRESHOLD) / SIGMA)
    right = certify_given_class(
        probe,
        image(),
        0,
        sigma=SIGMA,
        num_classes=3,
        n=4000,
        alpha=0.001,
        batch_size=500,
        rng=np.random.default_rng(1),
    )
    assert right.counts.sum() == 4000 and right.counts0.tolist() == [1, 0, 0]
    assert right.certificate.predicted_class == 0
    assert right.certificate.p_a_lower == clopper_pearson_lower(right.counts[0], 4000, 0.001)
    assert right.certificate.p_a_lower < p0  # a valid lower bound (alpha = 0.001)
    wrong = certify_given_class(
        probe,
        image(),
        1,
        sigma=SIGMA,
        num_classes=3,
        n=4000,
        alpha=0.001,
        batch_size=500,
        rng=np.random.default_rng(1),
    )
    assert wrong.certificate.abstained  # a wrong guess can only abstain, never certify it


def test_the_fallback_fits_the_budget_within_the_protocol_and_its_floors():
    # 100 ms at 100,000 samples/s: 8,000 draws after the safety margin, a twentieth selecting
    assert fallback_samples(100.0, 100_000.0, 100, 10_000) == (100, 7_900)
    total = int(0.1 * 20_000 * SAFETY)
    assert fallback_samples(100.0, 20_000.0, 100, 10_000) == (total // 20, total - total // 20)
    assert fallback_samples(100.0, 1e9, 100, 10_000) == (100, 10_000)  # never past the protocol
    assert fallback_samples(1.0, 1_000.0, 100, 10_000) == (MIN_N0, MIN_N)  # nor below the floor
