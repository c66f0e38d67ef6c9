"""The randomized-smoothing math, pure numpy/scipy: what is evaluated is exactly what is served.

Names follow Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via Randomized
Smoothing", Algorithm CERTIFY:

    counts0 = SAMPLEUNDERNOISE(f, x, n0, sigma);  cA = argmax counts0
    counts  = SAMPLEUNDERNOISE(f, x, n, sigma);   nA = counts[cA]
    pABar   = LOWERCONFBOUND(nA, n, 1 - alpha)
    if pABar > 1/2: return cA, radius sigma * Phi^-1(pABar)   else ABSTAIN

With probability at least 1 - alpha over the noise, a returned (cA, R) is correct: the smoothed
classifier g predicts cA everywhere in the L2 ball of radius R around x. Radii live in the model's
input space, pixels in [0, 1], because normalization is the first layer of every network.

Accelerated Smoothing (Bhardwaj, Kaushik & Gupta 2024) replaces the two sampling steps by a
surrogate network that predicts the class-frequency vector counts / n directly; the served
certificate then applies the same LOWERCONFBOUND to the predicted count round(pA * n), minus a
conformal calibration shift (`fit_conformal_shift`, on the normal-quantile scale) that bounds
how often the served radius exceeds the Monte-Carlo one. The shift may depend on how confident
the surrogate is (`ShiftRule`, Mondrian conformal): one split-conformal shift per bin of the raw
bound, so a bin where the surrogate is accurate is not cut as deeply as one where it is not.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaincinv, ndtr, ndtri


@dataclass(frozen=True)
class Certificate:
    """One smoothed prediction. `predicted_class` is None exactly when `abstained`."""

    predicted_class: int | None
    abstained: bool
    radius: float  # certified L2 radius in [0,1]-pixel space; 0.0 when abstained
    p_a_lower: float  # the lower confidence bound on pA that the radius was computed from


def clopper_pearson_lower(n_a, n, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    `n_a` successes out of `n` trials; the bound is the alpha-quantile of Beta(nA, n - nA + 1),
    and 0 when nA = 0 (the Beta distribution is undefined there). Works on scalars and arrays.
    `betaincinv(a, b, alpha)` is `scipy.stats.beta.ppf(alpha, a, b)` without the ~200 us of
    distribution-object overhead per call, which matters on the 3 ms serving path.
    """
    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    safe = np.where(n_a > 0, n_a, 1.0)
    bound = np.where(n_a > 0, betaincinv(safe, n - n_a + 1.0, alpha), 0.0)
    return float(bound) if bound.ndim == 0 else bound


def radius_from_p_lower(p_a_lower, sigma: float):
    """R = sigma * Phi^-1(pABar): the certified L2 radius; 0 where pABar <= 1/2 (abstain).

    `ndtri` is Phi^-1 (`scipy.stats.norm.ppf`) at a fraction of the call overhead.
    """
    p = np.clip(np.asarray(p_a_lower, dtype=np.float64), 0.0, 1.0)
    r = np.where(p > 0.5, sigma * ndtri(np.where(p > 0.5, p, 0.75)), 0.0)
    return float(r) if r.ndim == 0 else r


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can give with n samples: every draw names cA, so
    pABar = alpha^(1/n) and R = sigma * Phi^-1(alpha^(1/n)) (3.2 sigma at n = 10^4 and
    alpha = 0.001)."""
    return float(radius_from_p_lower(alpha ** (1 / n), sigma))


def abstains(p_a_lower) -> bool:
    """CERTIFY abstains when the lower bound does not clear 1/2 (no majority is certain)."""
    return not p_a_lower > 0.5


def certify_from_counts(counts0, counts, alpha: float, sigma: float) -> Certificate:
    """CERTIFY from the two sampling rounds: counts0 (n0 selection draws), counts (n estimation)."""
    counts0 = np.asarray(counts0)
    counts = np.asarray(counts)
    c_a = int(np.argmax(counts0))
    n = int(counts.sum())
    p_a_lower = clopper_pearson_lower(int(counts[c_a]), n, alpha)
    if abstains(p_a_lower):
        return Certificate(None, True, 0.0, p_a_lower)
    return Certificate(c_a, False, radius_from_p_lower(p_a_lower, sigma), p_a_lower)


def surrogate_p_lower(p_a, n: int, alpha: float, shift: float | ShiftRule = 0.0):
    """The bound CERTIFY would compute if it had observed the frequency `p_a` over `n` samples.

    The surrogate's pA stands for nA / n, so nA = round(pA * n). `shift` is the conformal
    calibration shift q (0 for the raw rule of the paper), subtracted on the normal-quantile
    scale: Phi^-1(pABar_served) = Phi^-1(pABar_raw) - q, so the served radius is exactly the raw
    radius minus sigma * q. Why that scale and not pABar itself: surrogate errors in pA are
    largest mid-range and tiny near 1, where the radius is most sensitive to pA; one shift in
    probability units would either over-cut small radii or under-cut large ones.
    """
    n_a = np.rint(np.clip(np.asarray(p_a, dtype=np.float64), 0.0, 1.0) * n)
    return apply_shift(clopper_pearson_lower(n_a, n, alpha), shift)


@dataclass(frozen=True)
class ShiftRule:
    """A calibration shift per bin of the raw bound (Mondrian split-conformal).

    The bin of an image is where z_raw = Phi^-1(raw pABar) falls among `edges` (increasing;
    bin j holds edges[j-1] <= z_raw < edges[j]); its served bound is Phi(z_raw - shifts[j]).
    Each bin's shift is the split-conformal quantile of the scores of the calibration images in
    that bin, so P(over-claim | bin) <= epsilon for every bin, hence overall. Hashable: the
    micro-batcher groups requests by their rule.
    """

    edges: tuple[float, ...]
    shifts: tuple[float, ...]

    def __post_init__(self):
        if len(self.shifts) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} bin edges need {len(self.edges) + 1} shifts")
        if list(self.edges) != sorted(self.edges):
            raise ValueError(f"bin edges must increase: {self.edges}")

    def bin_of(self, z_raw):
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), z_raw, side="right")

    def at(self, z_raw):
        """The shift that applies to raw normal-quantile bound(s) `z_raw`."""
        return np.asarray(self.shifts, dtype=np.float64)[self.bin_of(z_raw)]


def apply_shift(p_a_lower, shift: float | ShiftRule):
    """Phi(Phi^-1(pABar) - shift): lowers the radius sigma * Phi^-1(pABar) by sigma * shift;
    with a `ShiftRule`, by the shift of the bin that Phi^-1(pABar) falls in."""
    if isinstance(shift, ShiftRule):
        z = ndtri(np.asarray(p_a_lower, dtype=np.float64))
        out = ndtr(z - shift.at(z))
        return float(out) if out.ndim == 0 else out
    return p_a_lower if shift == 0 else ndtr(ndtri(p_a_lower) - shift)


def certify_from_probabilities(
    probs, n: int, alpha: float, sigma: float, shift: float | ShiftRule = 0.0
) -> list[Certificate]:
    """Served certificates for a batch of surrogate outputs `probs` [B, K] (rows sum to 1)."""
    probs = np.atleast_2d(np.asarray(probs))
    c_a = probs.argmax(axis=1)
    p_lower = np.atleast_1d(surrogate_p_lower(probs[np.arange(len(probs)), c_a], n, alpha, shift))
    radii = np.atleast_1d(radius_from_p_lower(p_lower, sigma))
    return [
        Certificate(None, True, 0.0, float(p))
        if abstains(p)
        else Certificate(int(c), False, float(r), float(p))
        for c, p, r in zip(c_a, p_lower, radii, strict=True)
    ]


# certify_batch looks a row's bound and radius up in a table over every count nA = 0..n, built
# once per (n, alpha, sigma, shift) by the vectorised rule above, for n up to this many samples
# (a table of n = 10^4 takes ~15 ms to build; the rule costs ~20 us per call at batch 1).
TABLE_MAX_N = 1 << 20


@functools.lru_cache(maxsize=16)
def _certificate_table(n: int, alpha: float, sigma: float, shift) -> tuple:
    """(pABar, radius, abstains) for nA = 0..n: `surrogate_p_lower` and `radius_from_p_lower`
    of every count the rule can see, computed elementwise exactly as for one row."""
    p_lower = np.atleast_1d(
        apply_shift(clopper_pearson_lower(np.arange(n + 1, dtype=np.float64), n, alpha), shift)
    )
    radius = np.atleast_1d(radius_from_p_lower(p_lower, sigma))
    return p_lower.tolist(), radius.tolist(), [abstains(p) for p in p_lower]


def _certify_rows(probs, p_a: list, n: int, alpha: float, sigma: float, shift) -> list:
    """`certify_from_probabilities` of `probs` (rows with top probability `p_a`), by table:
    nA = round(pA * n), half to even as `np.rint`, in float64 as `surrogate_p_lower`."""
    if n > TABLE_MAX_N or not all(math.isfinite(p) for p in p_a):
        return certify_from_probabilities(probs, n, alpha, sigma, shift)
    p_lower, radius, abstained = _certificate_table(n, alpha, sigma, shift)
    certs = []
    for c, p in zip(probs.argmax(axis=1).tolist(), p_a, strict=True):
        k = round(min(max(p, 0.0), 1.0) * n)
        certs.append(
            Certificate(None, True, 0.0, p_lower[k])
            if abstained[k]
            else Certificate(c, False, radius[k], p_lower[k])
        )
    return certs


def certify_batch(probs, n: int, alpha: float, sigma: float, shifts) -> list[tuple]:
    """(p_a, Certificate) per row of `probs` [B, K], each row under its own shift in `shifts`
    (a float or a `ShiftRule`; rows sharing a shift are certified together). The same
    certificates as `certify_from_probabilities`, looked up in a table of every count."""
    probs = np.atleast_2d(np.asarray(probs))
    p_a = probs.max(axis=1).tolist()
    if len(set(shifts)) == 1:
        return list(zip(p_a, _certify_rows(probs, p_a, n, alpha, sigma, shifts[0]), strict=True))
    out: list[tuple[float, Certificate]] = [None] * len(probs)  # type: ignore[list-item]
    for shift in set(shifts):
        rows = [i for i, s in enumerate(shifts) if s == shift]
        certs = _certify_rows(probs[rows], [p_a[i] for i in rows], n, alpha, sigma, shift)
        for i, cert in zip(rows, certs, strict=True):
            out[i] = (p_a[i], cert)
    return out


def certified_accuracy(pred, radius, labels, r: float) -> float:
    """Fraction certified with the true class at radius >= r (Cohen et al.'s definition);
    `pred` uses -1 for an abstention."""
    return float(np.mean((pred == labels) & (pred >= 0) & (radius >= r)))


RADIUS_TOLERANCE = 1e-12  # radii closer than this are equal: float noise is not an over-claim


def overestimated(pred, radius, mc_pred, mc_radius, tol: float = RADIUS_TOLERANCE):
    """THE over-estimation rule: a certificate over-claims the Monte-Carlo one when it names the
    same class with a larger radius (by more than `tol`), or another class while certifying
    (what calibration bounds by epsilon, what shadow audits and the drift alarm count).

    `pred` and `mc_pred` use -1 for an abstention. Works on scalars (returns a bool) and arrays
    (returns a bool array).
    """
    pred, mc_pred = np.asarray(pred), np.asarray(mc_pred)
    same = pred == mc_pred
    over = (same & (np.asarray(radius) > np.asarray(mc_radius) + tol)) | (~same & (pred >= 0))
    return bool(over) if over.ndim == 0 else over


def overestimation_scores(served_class, served_p_lower_raw, mc_class, mc_p_lower):
    """Conformal scores s_i: the served certificate with shift q over-claims iff s_i > q.

    A served certificate violates the Monte-Carlo one when its radius is larger, or when it
    names another class with a positive radius. The radius is increasing in pABar, so both
    reduce to one threshold on the normal-quantile scale of `surrogate_p_lower`:
    violation iff Phi^-1(p_raw) - q > Phi^-1(max(1/2, p_mc)), where p_mc counts only when the
    classes agree (an MC abstention or another class leaves 1/2, where the served radius becomes
    positive). So s_i = Phi^-1(p_raw_i) - Phi^-1(max(1/2, p_mc_i if same class)), i.e. the
    radius over-claim in units of sigma. `mc_class` uses -1 for an abstention.
    """
    served_class = np.asarray(served_class)
    mc_class = np.asarray(mc_class)
    same = (served_class == mc_class) & (mc_class >= 0)
    floor = np.where(same, np.maximum(0.5, np.asarray(mc_p_lower, dtype=np.float64)), 0.5)
    return ndtri(np.asarray(served_p_lower_raw, dtype=np.float64)) - ndtri(floor)


def fit_conformal_shift(scores, epsilon: float) -> float:
    """Split-conformal shift q: for an exchangeable new image, P(score > q) <= epsilon.

    q is the ceil((m + 1)(1 - epsilon))-th smallest of the m calibration scores (+inf when that
    rank exceeds m: too few images for this epsilon, so the served rule must always abstain).
    q is never negative: calibration may only lower served radii, never raise them.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    m = len(scores)
    rank = math.ceil((m + 1) * (1.0 - epsilon))
    if rank > m:
        return math.inf
    return max(0.0, float(scores[rank - 1]))


def fit_binned_shifts(z_raw, scores, edges, epsilon: float) -> ShiftRule:
    """Mondrian split-conformal: `fit_conformal_shift` on the scores of each bin of `z_raw`.

    `edges` must not depend on these calibration scores (choose them on other images) for the
    per-bin guarantee to hold; a bin with fewer than 1/epsilon - 1 images gets +inf (always
    abstain there), exactly as one global shift would with too few images.
    """
    rule = ShiftRule(tuple(float(e) for e in edges), (0.0,) * (len(edges) + 1))
    bins = rule.bin_of(np.asarray(z_raw, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    shifts = tuple(fit_conformal_shift(scores[bins == j], epsilon) for j in range(len(edges) + 1))
    return ShiftRule(rule.edges, shifts)


def hybrid_route(p_a, p_a_lower, margin: float):
    """Which method answers /certify?mode=hybrid, from the surrogate's output alone.

    `p_a` is the surrogate's predicted frequency of its top class, `p_a_lower` the served
    (calibrated) bound computed from it, `margin` in [0, 1/2):

      "clear_certify"  p_a_lower >= 1/2 + margin: the served certificate stands, far enough
                       above CERTIFY's abstention threshold that a small error in p_a cannot
                       flip it;
      "clear_abstain"  p_a <= 1/2 - margin: the surrogate sees no majority at all; a Monte-Carlo
                       run with fewer samples than the protocol would abstain as well;
      "boundary"       otherwise: Monte-Carlo CERTIFY on the base model answers.

    Works on scalars (returns a str) and arrays (returns an array of str).
    """
    p_a = np.asarray(p_a, dtype=np.float64)
    p_a_lower = np.asarray(p_a_lower, dtype=np.float64)
    route = np.where(
        p_a_lower >= 0.5 + margin,
        "clear_certify",
        np.where(p_a <= 0.5 - margin, "clear_abstain", "boundary"),
    )
    return str(route) if route.ndim == 0 else route
