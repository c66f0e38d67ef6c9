"""The smoothing math: Clopper-Pearson bounds, radii, abstention, served certificates, and the
hybrid mode's routing rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtri
from scipy.stats import binom, norm

from accsmooth.smoothing import (
    ShiftRule,
    certify_batch,
    certify_from_counts,
    certify_from_probabilities,
    clopper_pearson_lower,
    fit_conformal_shift,
    hybrid_route,
    max_certifiable_radius,
    overestimated,
    radius_from_p_lower,
    surrogate_p_lower,
)


@pytest.mark.parametrize("n", [1, 10, 100, 10_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_lower_bound_when_every_sample_agrees_is_alpha_to_the_one_over_n(n, alpha):
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)


def test_lower_bound_is_zero_when_no_sample_agrees():
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0


@pytest.mark.parametrize("n_a,n", [(1, 10), (55, 100), (9_990, 10_000), (70_000, 100_000)])
def test_lower_bound_solves_the_binomial_tail_equation(n_a, n):
    """p_L is where seeing >= nA successes has probability alpha: P(Bin(n, p_L) >= nA) = alpha."""
    alpha = 0.001
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    assert binom.sf(n_a - 1, n, p_lower) == pytest.approx(alpha, rel=1e-6)
    assert p_lower < n_a / n


def test_lower_bound_works_on_arrays():
    bounds = clopper_pearson_lower(np.array([0, 50, 100]), 100, 0.01)
    assert bounds.shape == (3,)
    assert bounds[0] == 0.0 and 0 < bounds[1] < bounds[2] < 1


def test_radius_is_sigma_times_the_normal_quantile():
    assert radius_from_p_lower(norm.cdf(1.0), 0.5) == pytest.approx(0.5)
    assert radius_from_p_lower(norm.cdf(2.0), 0.25) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "sigma"), [(10_000, 0.25), (100_000, 1.0), (100, 0.5)])
def test_the_largest_certifiable_radius_is_certify_when_every_draw_agrees(n, sigma):
    every_draw = certify_from_counts(np.array([5, 0]), np.array([n, 0]), 0.001, sigma)
    assert max_certifiable_radius(n, 0.001, sigma) == pytest.approx(every_draw.radius, rel=1e-12)
    assert max_certifiable_radius(n, 0.001, sigma) == pytest.approx(sigma * ndtri(0.001 ** (1 / n)))


def test_radius_increases_with_the_lower_bound():
    p = np.linspace(0.501, 0.99999, 200)
    radii = radius_from_p_lower(p, 0.25)
    assert np.all(np.diff(radii) > 0)


@pytest.mark.parametrize("p_lower", [0.0, 0.3, 0.5])
def test_radius_is_zero_at_or_below_one_half(p_lower):
    assert radius_from_p_lower(p_lower, 0.25) == 0.0


def test_certify_abstains_when_the_bound_does_not_clear_one_half():
    cert = certify_from_counts([60, 40], [5_050, 4_950], alpha=0.001, sigma=0.25)
    assert cert.abstained and cert.predicted_class is None and cert.radius == 0.0
    assert cert.p_a_lower <= 0.5


def test_certify_abstains_when_the_selected_class_is_never_seen_again():
    cert = certify_from_counts([0, 100], [1_000, 0], alpha=0.001, sigma=0.25)
    assert cert.abstained and cert.p_a_lower == 0.0


def test_certify_uses_the_class_selected_by_the_first_round():
    cert = certify_from_counts([10, 90, 0], [50, 9_900, 50], alpha=0.001, sigma=0.5)
    assert cert.predicted_class == 1 and not cert.abstained
    expected = 0.5 * norm.ppf(clopper_pearson_lower(9_900, 10_000, 0.001))
    assert cert.radius == pytest.approx(expected)


def test_surrogate_bound_treats_p_a_as_a_count_out_of_n():
    assert surrogate_p_lower(0.9, 1000, 0.001) == pytest.approx(
        clopper_pearson_lower(900, 1000, 0.001)
    )


def test_calibration_shift_lowers_the_served_bound_exactly():
    raw, shifted = (
        certify_from_probabilities([[0.95, 0.05]], 10_000, 0.001, 0.25, shift)[0]
        for shift in (0.0, 0.03)
    )
    # the shift is on the normal-quantile scale: the radius drops by exactly sigma * shift
    assert ndtri(shifted.p_a_lower) == pytest.approx(ndtri(raw.p_a_lower) - 0.03)
    assert shifted.radius == pytest.approx(raw.radius - 0.25 * 0.03)


def test_served_certificate_abstains_on_a_uniform_surrogate():
    (cert,) = certify_from_probabilities([[1 / 3, 1 / 3, 1 / 3]], 10_000, 0.001, 0.25)
    assert cert.abstained and cert.radius == 0.0


def test_conformal_shift_is_the_right_order_statistic():
    scores = np.arange(1, 20) / 100  # 19 scores: rank ceil(20 * 0.9) = 18 -> 0.18
    assert fit_conformal_shift(scores, 0.1) == pytest.approx(0.18)
    assert fit_conformal_shift([-0.2, -0.1], 0.5) == 0.0  # never negative
    assert math.isinf(fit_conformal_shift([0.1, 0.2], 0.01))  # too few scores


def test_the_route_is_clear_only_beyond_the_margin_on_each_side():
    assert hybrid_route(0.99, 0.55, 0.05) == "clear_certify"
    assert hybrid_route(0.99, 0.5499, 0.05) == "boundary"
    assert hybrid_route(0.45, 0.40, 0.05) == "clear_abstain"
    assert hybrid_route(0.4501, 0.40, 0.05) == "boundary"
    routes = hybrid_route(np.array([0.99, 0.5, 0.3]), np.array([0.9, 0.48, 0.2]), 0.05)
    assert list(routes) == ["clear_certify", "boundary", "clear_abstain"]


def test_a_zero_margin_leaves_no_boundary_where_the_surrogate_certifies():
    assert hybrid_route(0.6, 0.5, 0.0) == "clear_certify"  # p_a_lower >= 1/2 + 0


def test_overestimation_is_a_larger_radius_on_the_same_class_or_another_certified_class():
    assert overestimated(3, 0.5, 3, 0.4) and not overestimated(3, 0.4, 3, 0.5)
    assert not overestimated(3, 0.4 + 1e-13, 3, 0.4)  # float noise is not an over-claim
    assert overestimated(1, 0.1, 2, 0.9) and overestimated(1, 0.1, -1, 0.0)  # MC abstained
    assert not overestimated(-1, 0.0, 2, 0.9)  # an abstention never over-claims
    over = overestimated(np.array([3, -1, 1]), np.array([0.5, 0, 0.1]), np.array([3, 2, 1]), 0.2)
    assert over.tolist() == [True, False, False]


RULE = ShiftRule(edges=(0.8, 1.5, 2.4), shifts=(0.48, 0.78, 0.68, 0.45))


@pytest.mark.parametrize("shift", [0.0, 0.3, RULE])
@pytest.mark.parametrize("n", [100, 10_000])
def test_certify_batch_by_table_is_the_rule_exactly(shift, n):
    """certify_batch looks certificates up in a table over nA = 0..n: the same values, bit for
    bit, as certify_from_probabilities, for every count, for halves (rounding) and random rows."""
    rng = np.random.default_rng(0)
    counts = np.arange(n + 1) / n
    halves = (np.arange(n) + 0.5) / n
    top = np.concatenate([counts, halves, rng.random(500), [0.0, 1.0]]).astype(np.float32)
    probs = np.stack([top, 1.0 - top], axis=1)
    probs = np.concatenate([probs, rng.dirichlet(np.ones(10), 200)[:, :2].astype(np.float32)])
    served = certify_batch(probs, n, 0.001, 0.25, [shift] * len(probs))
    expected = certify_from_probabilities(probs, n, 0.001, 0.25, shift)
    assert [cert for _, cert in served] == expected
    assert [p for p, _ in served] == [float(p) for p in probs.max(axis=1)]


def test_certify_batch_certifies_each_row_under_its_own_shift():
    probs = np.array([[0.9, 0.1], [0.97, 0.03], [0.6, 0.4], [0.99, 0.01]], dtype=np.float32)
    shifts = [0.0, RULE, 0.3, RULE]
    served = certify_batch(probs, 10_000, 0.001, 0.25, shifts)
    for row, shift, (p_a, cert) in zip(probs, shifts, served, strict=True):
        assert cert == certify_from_probabilities(row[None], 10_000, 0.001, 0.25, shift)[0]
        assert p_a == float(row.max())


def test_certify_batch_without_a_table_for_non_finite_probabilities():
    probs = np.array([[np.nan, 0.5], [0.9, 0.1]], dtype=np.float32)
    served = certify_batch(probs, 10_000, 0.001, 0.25, [0.0, 0.0])
    expected = certify_from_probabilities(probs, 10_000, 0.001, 0.25, 0.0)
    assert served[1][1] == expected[1]
    assert served[0][1].abstained and expected[0].abstained
