"""Calibration in the exporter: cross-fitting picks the number of bins, and the vectorised
Monte-Carlo certificates equal the core's. The shift math itself: tests/core/test_calibration.py."""

import numpy as np
import pytest

from accsmooth.smoothing import ShiftRule, overestimated
from exporter.fidelity import (
    Evidence,
    Protocol,
    fit_rule,
    monte_carlo_certificates,
    top_of_range,
)


def _evidence(rng, m, n=10_000):
    """Images of class 0 whose surrogate is exact where p_A is high and noisy where it is low."""
    p_true = rng.uniform(0.55, 0.9995, size=m)
    noise = np.where(p_true > 0.75, 0.0, rng.normal(0.0, 0.03, size=m))
    p_hat = np.clip(p_true + noise, 0.5, 0.9999)
    k = rng.binomial(n, p_true)
    counts = np.stack([k, n - k], axis=1)
    counts0 = np.tile([100, 0], (m, 1))
    return Evidence(np.zeros(m, dtype=int), counts0, counts, np.stack([p_hat, 1 - p_hat], 1))


def test_cross_fitting_picks_the_bin_count_with_the_best_held_out_accuracy_and_fits_on_all():
    p = Protocol(10_000, 0.001, 0.25)
    calib = _evidence(np.random.default_rng(3), 800)
    fit = fit_rule(
        calib,
        p,
        epsilon=0.01,
        candidates=(1, 2, 4),
        selection_fraction=0.0,
        selection_radii=(0.0, 0.25, 0.5, 0.75),
        seed=0,
    )
    assert set(fit.selection) == {"1", "2", "4"}
    assert all(0 < a < 1 for a in fit.selection.values())
    assert str(fit.bins) == max(fit.selection, key=fit.selection.get) and fit.top is None
    assert len(fit.fit_rows) == 800  # every calibration image fits the chosen rule
    fresh = _evidence(np.random.default_rng(4), 4000)
    z, scores = fresh.raw_z_and_scores(p)
    shift = fit.rule.at(z) if isinstance(fit.rule, ShiftRule) else fit.rule
    assert np.mean(scores > shift) <= 0.02  # epsilon = 1%, plus sampling slack


def _evidence_with_certain_images(rng, m, n=10_000):
    """A third of the images: the base never errs under noise and the surrogate says so; the
    rest as in `_evidence`, but the surrogate over-confident in the middle of the range."""
    certain = rng.random(m) < 1 / 3
    p_true = np.where(certain, 1.0, rng.uniform(0.55, 0.995, size=m))
    p_hat = np.where(certain, 1.0 - 1e-6, np.clip(p_true + rng.normal(0, 0.03, m), 0.5, 0.999))
    k = rng.binomial(n, p_true)
    counts, counts0 = np.stack([k, n - k], axis=1), np.tile([100, 0], (m, 1))
    return Evidence(np.zeros(m, dtype=int), counts0, counts, np.stack([p_hat, 1 - p_hat], 1))


def test_a_top_bin_keeps_the_largest_radii_for_images_the_surrogate_deems_certain():
    p = Protocol(10_000, 0.001, 0.25)
    calib = _evidence_with_certain_images(np.random.default_rng(5), 1500)
    settings = dict(
        epsilon=0.01, candidates=(1, 2), selection_fraction=0.0, seed=0, top_bins=(0.1,)
    )
    fit = fit_rule(calib, p, selection_radii=(0.0, 0.25, 0.5, 0.75), **settings)
    assert set(fit.selection) == {"1", "2", "1+top0.1", "2+top0.1"}
    assert fit.top == 0.1 and fit.rule.edges[-1] == pytest.approx(top_of_range(p) - 0.1)
    fresh = _evidence_with_certain_images(np.random.default_rng(6), 4000)
    pred, _, radius = fresh.served(p, fit.rule)
    mc_pred, _, mc_radius = fresh.monte_carlo(p)
    # the certain images keep radii Monte-Carlo reaches (0.797 at most), above 0.75 ...
    assert np.mean(radius >= 0.75) > 0.3 and np.mean(mc_radius >= 0.75) > 0.3
    # ... where one shift for all caps them below it, and the over-claims stay near epsilon
    one_shift = fit_rule(calib, p, selection_radii=(0.0,), **(settings | {"top_bins": ()}))
    assert np.max(fresh.served(p, one_shift.rule)[2]) < 0.75
    assert np.mean(overestimated(pred, radius, mc_pred, mc_radius)) <= 0.02


def test_vectorised_monte_carlo_certificates_equal_certify_from_counts():
    from accsmooth.smoothing import certify_from_counts

    rng = np.random.default_rng(5)
    counts0 = rng.multinomial(100, [0.5, 0.3, 0.2], size=300)
    counts = rng.multinomial(10_000, [0.55, 0.3, 0.15], size=300)
    pred, p_lower, radius = monte_carlo_certificates(counts0, counts, 0.001, 0.25)
    for i in range(300):
        cert = certify_from_counts(counts0[i], counts[i], 0.001, 0.25)
        assert pred[i] == (-1 if cert.abstained else cert.predicted_class)
        assert p_lower[i] == pytest.approx(cert.p_a_lower) and radius[i] == pytest.approx(
            cert.radius
        )
    assert (pred == -1).any() and (pred >= 0).any()  # both outcomes exercised
