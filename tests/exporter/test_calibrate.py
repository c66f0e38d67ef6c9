"""Calibration: the split-conformal shift reaches its coverage; the violation score is right."""

import numpy as np
from scipy.special import ndtri

from server.smoothing import fit_conformal_shift, overestimation_scores


def test_conformal_shift_bounds_the_violation_rate_on_fresh_scores():
    rng = np.random.default_rng(0)
    epsilon, rates = 0.05, []
    for _ in range(200):
        # synthetic scores: a surrogate that over-claims by a noisy, skewed margin
        calib = rng.gamma(2.0, 0.02, size=400) - 0.01
        fresh = rng.gamma(2.0, 0.02, size=2000) - 0.01
        q = fit_conformal_shift(calib, epsilon)
        rates.append(np.mean(fresh > q))
    assert np.mean(rates) <= epsilon + 0.005  # marginal guarantee: E[rate] <= epsilon
    assert np.mean(rates) >= epsilon - 0.02  # and it is not wastefully conservative


def test_too_few_calibration_images_give_an_infinite_shift():
    assert fit_conformal_shift(np.zeros(50), 0.01) == float("inf")  # needs >= 99 for 1%


def test_shift_never_raises_radii():
    assert fit_conformal_shift(-np.ones(500), 0.01) == 0.0


def test_score_counts_a_larger_radius_on_the_same_class_as_a_violation():
    s = overestimation_scores([3], [0.9], [3], [0.8])
    assert np.isclose(s[0], ndtri(0.9) - ndtri(0.8))  # the radius over-claim in units of sigma


def test_score_counts_another_class_with_a_positive_radius_as_a_violation():
    assert overestimation_scores([1], [0.7], [2], [0.95])[0] > 0
    assert overestimation_scores([1], [0.7], [-1], [0.3])[0] > 0  # Monte-Carlo abstained


def test_score_is_not_a_violation_when_the_served_rule_abstains():
    assert overestimation_scores([1], [0.45], [2], [0.95])[0] <= 0
