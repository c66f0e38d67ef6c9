"""The drift test: exact one-sided binomial test of H0 rate <= epsilon over a sliding window."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from server.shadow.drift import DriftWindow, binomial_drift_test


@pytest.mark.parametrize(("k", "m"), [(0, 10), (3, 20), (5, 50), (12, 200), (30, 200)])
def test_the_p_value_is_scipys_exact_one_sided_binomial_test(k, m):
    result = binomial_drift_test(k, m, epsilon=0.05, level=0.01)
    expected = binomtest(k, m, 0.05, alternative="greater").pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-9)
    assert result.rate == k / m


@pytest.mark.parametrize(("k", "m"), [(1, 2), (2, 2), (4, 20), (6, 20), (10, 100), (20, 200)])
def test_drifting_iff_the_clopper_pearson_lower_bound_exceeds_epsilon(k, m):
    result = binomial_drift_test(k, m, epsilon=0.05, level=0.01)
    assert result.drifting == (result.rate_lower > 0.05)


def test_two_overestimations_in_two_audits_are_significant_one_is_not():
    assert binomial_drift_test(2, 2, 0.05, 0.01).drifting  # p = 0.0025
    assert not binomial_drift_test(1, 1, 0.05, 0.01).drifting  # p = 0.05


def test_a_rate_at_epsilon_is_not_drift_even_over_a_large_window():
    assert not binomial_drift_test(10, 200, 0.05, 0.01).drifting


def test_an_uncalibrated_bundle_is_never_drifting():
    result = binomial_drift_test(200, 200, None, 0.01)
    assert not result.drifting and result.rate == 1.0 and result.epsilon is None


def test_an_empty_window_is_not_drifting():
    result = binomial_drift_test(0, 0, 0.05, 0.01)
    assert not result.drifting and result.rate is None and result.audits == 0


def test_the_window_forgets_audits_older_than_its_size():
    window = DriftWindow(size=4, epsilon=0.05, level=0.01)
    for _ in range(4):
        window.add(True)
    assert window.status().drifting and window.status().overestimated == 4
    for _ in range(4):
        window.add(False)
    status = window.status()
    assert status.audits == 4 and status.overestimated == 0 and not status.drifting
