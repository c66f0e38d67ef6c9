"""The drift alarm: is the surrogate over-claiming more often than its calibration promises?

A calibrated bundle promises (split-conformal, `accsmooth.smoothing.fit_conformal_shift`) that a
served certificate over-claims the Monte-Carlo one (larger radius, or a class Monte-Carlo does
not certify) with probability at most `epsilon`, for images like the calibration set. Shadow
audits (`server.shadow.auditor`) re-certify a random sample of served answers with Monte-Carlo
at the bundle's protocol; each is a Bernoulli trial "over-estimated or not".

The test, over the last W audits (a sliding window, `ACCSMOOTH_DRIFT_WINDOW`), with k
over-estimations out of m:

    H0: rate <= epsilon   against   H1: rate > epsilon         (one-sided, exact binomial)
    p-value = P(Bin(m, epsilon) >= k);  drifting  iff  p-value < level   (`ACCSMOOTH_DRIFT_LEVEL`)

Equivalently, the one-sided (1 - level) Clopper-Pearson lower bound on the rate exceeds epsilon
(the same bound as CERTIFY's, `clopper_pearson_lower`); both are computed and reported.
`level` is the false-alarm probability of one test. The window is re-tested after every audit,
so over a long honest run an occasional false alarm is expected: the shipped alerting rule
(docker/prometheus/rules/drift.yml) therefore asks for the flag to persist before it fires.
Uncalibrated bundles promise nothing and are never tested.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from scipy.special import bdtrc

from accsmooth.smoothing import clopper_pearson_lower


@dataclass(frozen=True)
class DriftTest:
    """The result of one test over a window of audits."""

    audits: int  # m, audits in the window
    overestimated: int  # k, over-estimations among them
    rate: float | None  # k / m (None when m = 0)
    rate_lower: float  # one-sided (1 - level) Clopper-Pearson lower bound on the rate
    p_value: float  # P(Bin(m, epsilon) >= k) under H0: rate = epsilon
    epsilon: float | None  # the bundle's promise; None when uncalibrated
    level: float
    drifting: bool


def binomial_drift_test(k: int, m: int, epsilon: float | None, level: float) -> DriftTest:
    """Exact one-sided binomial test of H0: rate <= epsilon, from k over-estimations in m."""
    if m == 0:
        return DriftTest(0, 0, None, 0.0, 1.0, epsilon, level, False)
    lower = clopper_pearson_lower(k, m, level)
    if epsilon is None:
        return DriftTest(m, k, k / m, lower, 1.0, None, level, False)
    p_value = float(bdtrc(k - 1, m, epsilon)) if k > 0 else 1.0  # P(X >= k) = P(X > k - 1)
    return DriftTest(m, k, k / m, lower, p_value, epsilon, level, p_value < level)


class DriftWindow:
    """The last `size` audit outcomes of one model; thread-safe (audits finish on a worker)."""

    def __init__(self, size: int, epsilon: float | None, level: float):
        self.epsilon = epsilon
        self.level = level
        self._outcomes: deque[bool] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._last = binomial_drift_test(0, 0, epsilon, level)

    @property
    def size(self) -> int:
        return self._outcomes.maxlen or 0

    def add(self, overestimated: bool) -> DriftTest:
        """Record one audit and re-test the window."""
        with self._lock:
            self._outcomes.append(bool(overestimated))
            k, m = sum(self._outcomes), len(self._outcomes)
            self._last = binomial_drift_test(k, m, self.epsilon, self.level)
            return self._last

    def status(self) -> DriftTest:
        return self._last
