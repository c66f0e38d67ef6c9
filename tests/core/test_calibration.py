"""The calibration math of accsmooth.smoothing: the split-conformal shift and the per-bin
(Mondrian) shifts reach their coverage on synthetic scores; the violation score is right."""

import math

import numpy as np
import pytest
from scipy.special import ndtr, ndtri

from accsmooth.smoothing import (
    ShiftRule,
    apply_shift,
    fit_binned_shifts,
    fit_conformal_shift,
    overestimation_scores,
)


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


def _heteroscedastic(rng, m):
    """Synthetic raw bounds z and scores: a surrogate whose over-claim spread grows with z."""
    z = rng.uniform(0.0, 3.0, size=m)
    return z, rng.normal(0.0, 0.05 + 0.2 * (z > 1.5), size=m)


def test_binned_shifts_bound_the_violation_rate_in_every_bin():
    rng = np.random.default_rng(1)
    epsilon, edges, rates = 0.05, (1.5,), []
    for _ in range(200):
        z, scores = _heteroscedastic(rng, 400)
        rule = fit_binned_shifts(z, scores, edges, epsilon)
        z_new, s_new = _heteroscedastic(rng, 4000)
        over = s_new > rule.at(z_new)
        rates.append([over[z_new < 1.5].mean(), over[z_new >= 1.5].mean()])
    per_bin = np.mean(rates, axis=0)
    assert (per_bin <= epsilon + 0.006).all(), per_bin  # the guarantee holds bin by bin
    assert (per_bin >= epsilon - 0.025).all(), per_bin


def test_binned_shifts_cut_less_where_the_surrogate_is_accurate():
    rng = np.random.default_rng(2)
    z, scores = _heteroscedastic(rng, 2000)
    rule = fit_binned_shifts(z, scores, (1.5,), 0.01)
    one = fit_conformal_shift(scores, 0.01)
    assert rule.shifts[0] < 0.5 * one  # the accurate bin keeps most of its radius
    assert rule.shifts[1] == pytest.approx(one, rel=0.35)


def test_a_bin_with_too_few_images_always_abstains():
    rule = fit_binned_shifts(np.r_[np.zeros(500), np.ones(20)], np.zeros(520), (0.5,), 0.01)
    assert rule.shifts[0] == 0.0 and math.isinf(rule.shifts[1])
    assert apply_shift(0.99, rule) == 0.0


def test_shift_rule_applies_the_shift_of_the_raw_bounds_bin():
    rule = ShiftRule((1.0, 2.0), (0.5, 0.2, 0.1))
    p = ndtr(np.array([0.3, 1.5, 2.5]))
    assert ndtri(apply_shift(p, rule)) == pytest.approx([-0.2, 1.3, 2.4])
    with pytest.raises(ValueError, match="shifts"):
        ShiftRule((1.0,), (0.1,))
    with pytest.raises(ValueError, match="increase"):
        ShiftRule((2.0, 1.0), (0.1, 0.1, 0.1))
