"""How faithfully served certificates stand in for Monte-Carlo ones, from per-image evidence alone.

Every number of a bundle's report comes from four arrays per image set (calibration, evaluation,
hold-out): the labels, the two rounds of Monte-Carlo counts (n0 selection, n estimation) and the
surrogate's probabilities. `Evidence` holds them; the bundle ships them as `evidence.npz`, so
`python -m exporter.tables models/<name>` recomputes every table without sampling.

Calibration (`fit_rule`) picks the served rule on calibration images only. For each candidate
number of bins K, the raw bound's normal quantile z_raw is cut at equal-mass edges and the
Mondrian rule (K = 1: one global shift) is scored by its mean certified accuracy over
`selection_radii`, either
- on a seeded selection part of the calibration set, the shifts then fitted on the rest alone:
  K and the edges depend only on the selection part, so the fitting part and a new image stay
  exchangeable within each bin and P(over-claim) <= epsilon holds per bin, hence overall
  (split-conformal, Mondrian), exactly; or
- (`selection_fraction = 0`) by 2-fold cross-fitting on all calibration images, the shifts then
  fitted on all of them: at epsilon = 1% a bin needs 99 images, which a selection part of a few
  hundred images cannot give several bins; choosing K among a few candidates on the images the
  shifts come from makes the guarantee approximate, and the report's over-estimation rates on
  evaluation and hold-out images are its check.

A candidate may also set a bin of its own at the top of z_raw's range (`top_bins`: its width
below the largest z_raw the protocol allows, Phi^-1(alpha^(1/n)), 3.20 at n = 10,000): the
images the surrogate deems all but certain. Their over-claims are small, but in a bin shared
with merely confident images they get that bin's larger shift, which caps the served radius
below what Monte-Carlo certifies at the top (sigma * (3.20 - shift)); on a bin of their own they
keep it. The other K bins then split the rest at equal mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtri

from accsmooth.smoothing import (
    ShiftRule,
    apply_shift,
    clopper_pearson_lower,
    fit_binned_shifts,
    max_certifiable_radius,
    overestimated,
    overestimation_scores,
    radius_from_p_lower,
    surrogate_p_lower,
)
from exporter.scoring import accuracy_table, certified_accuracy


@dataclass(frozen=True)
class Protocol:
    n: int
    alpha: float
    sigma: float

    @classmethod
    def of(cls, manifest) -> Protocol:
        """The certification protocol a bundle's manifest records."""
        return cls(manifest.protocol.n, manifest.protocol.alpha, manifest.sigma)


def monte_carlo_certificates(counts0, counts, alpha: float, sigma: float):
    """`certify_from_counts` over many images at once: (class or -1, pABar, radius) per row of
    the selection counts `counts0` [M,K] and estimation counts `counts` [M,K]."""
    c_a = counts0.argmax(1)
    n_a = counts[np.arange(len(c_a)), c_a]
    p_lower = np.atleast_1d(clopper_pearson_lower(n_a, counts.sum(1), alpha))
    pred = np.where(p_lower > 0.5, c_a, -1)
    return pred, p_lower, np.atleast_1d(radius_from_p_lower(p_lower, sigma))


@dataclass(frozen=True)
class Evidence:
    """One image set: labels [M], Monte-Carlo counts0/counts [M,K], surrogate probs [M,K]."""

    labels: np.ndarray
    counts0: np.ndarray
    counts: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> Evidence:
        return Evidence(self.labels[rows], self.counts0[rows], self.counts[rows], self.probs[rows])

    def monte_carlo(self, p: Protocol):
        """CERTIFY's (class or -1, pABar, radius) per image, from the stored counts."""
        return monte_carlo_certificates(self.counts0, self.counts, p.alpha, p.sigma)

    def served(self, p: Protocol, rule: float | ShiftRule = 0.0):
        """The served rule's (class or -1, pABar, radius) per image, with calibration `rule`."""
        c = self.probs.argmax(1)
        p_raw = np.atleast_1d(surrogate_p_lower(self.probs[np.arange(len(c)), c], p.n, p.alpha))
        p_lower = np.atleast_1d(apply_shift(p_raw, rule))
        pred = np.where(p_lower > 0.5, c, -1)
        return pred, p_lower, np.atleast_1d(radius_from_p_lower(p_lower, p.sigma))

    def raw_z_and_scores(self, p: Protocol):
        """(Phi^-1 of the raw served bound, conformal over-claim score) per image."""
        _, p_raw, _ = self.served(p)
        c = self.probs.argmax(1)
        mc_pred, mc_p, _ = self.monte_carlo(p)
        return ndtri(p_raw), overestimation_scores(c, p_raw, mc_pred, mc_p)


def save_evidence(path: Path, sets: dict[str, Evidence]) -> None:
    """Compact .npz: counts as int32, probabilities as float32 (what the report recomputes)."""
    arrays = {}
    for name, e in sets.items():
        arrays |= {
            f"{name}_labels": e.labels.astype(np.int16),
            f"{name}_counts0": e.counts0.astype(np.int32),
            f"{name}_counts": e.counts.astype(np.int32),
            f"{name}_probs": e.probs.astype(np.float32),
        }
    np.savez_compressed(path, **arrays)


def load_evidence(path: Path) -> dict[str, Evidence]:
    d = np.load(path)
    names = sorted({k.rsplit("_", 1)[0] for k in d.files})
    return {
        name: Evidence(
            d[f"{name}_labels"].astype(np.int64),
            d[f"{name}_counts0"].astype(np.int64),
            d[f"{name}_counts"].astype(np.int64),
            d[f"{name}_probs"].astype(np.float64),
        )
        for name in names
    }


def mean_certified_accuracy(pred, radius, labels, radii) -> float:
    return float(np.mean([certified_accuracy(pred, radius, labels, r) for r in radii]))


def top_of_range(p: Protocol) -> float:
    """The largest z_raw = Phi^-1(raw pABar) the protocol allows: all n votes for the class
    (the largest certifiable radius in units of sigma)."""
    return max_certifiable_radius(p.n, p.alpha, 1.0)


def candidate_edges(z_raw, bins: int, top: float | None, p: Protocol) -> tuple[float, ...]:
    """Equal-mass edges for `bins` bins, below a bin of its own for z_raw >= the top of the
    range minus `top` (None: no such bin)."""
    z_raw = np.asarray(z_raw)
    if top is None:
        return equal_mass_edges(z_raw, bins)
    edge = top_of_range(p) - top
    return (*equal_mass_edges(z_raw[z_raw < edge], bins), edge)


def equal_mass_edges(z_raw, bins: int) -> tuple[float, ...]:
    """bins - 1 interior edges that split the images the raw rule certifies (z_raw > 0) into
    equal counts; images at or below 0 abstain whatever the shift, so they join the first bin."""
    z = np.sort(np.asarray(z_raw)[np.asarray(z_raw) > 0])
    if bins <= 1 or len(z) == 0:
        return ()
    return tuple(float(np.quantile(z, j / bins)) for j in range(1, bins))


@dataclass(frozen=True)
class RuleFit:
    rule: float | ShiftRule
    bins: int  # equal-mass bins, the top bin not counted
    top: float | None  # the width of the top bin, None when there is none
    selection: dict  # candidate ("K" or "K+top<width>") -> mean certified accuracy
    fit_rows: np.ndarray  # the calibration images the shifts were fitted on
    empirical_violation_rate: float  # on those images
    uncalibrated_violation_rate: float  # of the raw rule, on every calibration image

    @property
    def score(self) -> float | None:
        """The chosen rule's selection score (None when there was one candidate, no choice)."""
        return self.selection.get(_candidate_name(self.bins, self.top))


CROSS_FIT_REPEATS = 10  # seeded 2-fold splits averaged when choosing K by cross-fitting


def _cross_fit_accuracy(calib, p, z, scores, edges, epsilon, radii, seed) -> float:
    """Mean certified accuracy of the rule with these bin edges on one half when fitted on the
    other half, over CROSS_FIT_REPEATS seeded 2-fold splits of the calibration images."""
    accs = []
    for repeat in range(CROSS_FIT_REPEATS):
        order = np.random.default_rng([seed, repeat]).permutation(len(calib))
        halves = (order[: len(order) // 2], order[len(order) // 2 :])
        for fit, held in (halves, halves[::-1]):
            rule = fit_binned_shifts(z[fit], scores[fit], edges, epsilon)
            part = calib.subset(np.sort(held))
            pred, _, rad = part.served(p, rule)
            accs.append(mean_certified_accuracy(pred, rad, part.labels, radii))
    return float(np.mean(accs))


def fit_rule(
    calib: Evidence,
    p: Protocol,
    *,
    epsilon: float,
    candidates: tuple[int, ...],
    selection_fraction: float,
    selection_radii: tuple[float, ...],
    seed: int,
    top_bins: tuple[float, ...] = (),
) -> RuleFit:
    """The served calibration rule, chosen and fitted on calibration images only (see above).
    With one candidate and no selection part, it is the classic single split-conformal shift
    on every calibration image. With several candidates and no selection part, K is chosen by
    2-fold cross-fitting on all calibration images and the shifts are fitted on all of them:
    more power for small sets, at the price of choosing K on the images the shifts come from
    (the guarantee is exact for a K fixed in advance; the report's over-estimation rates on
    evaluation and hold-out images check the chosen rule)."""
    z, scores = calib.raw_z_and_scores(p)
    order = np.random.default_rng(seed).permutation(len(calib))
    cut = int(round(selection_fraction * len(calib)))
    select, fit = np.sort(order[:cut]), np.sort(order[cut:])
    rules = [(k, None) for k in candidates] + [(k, t) for k in candidates for t in top_bins]
    chosen, table = rules[0], {}
    if len(rules) > 1:
        for k, top in rules:
            name = _candidate_name(k, top)
            if cut:
                sel = calib.subset(select)
                edges = candidate_edges(z[select], k, top, p)
                rule = fit_binned_shifts(z[select], scores[select], edges, epsilon)
                pred, _, rad = sel.served(p, rule)
                table[name] = mean_certified_accuracy(pred, rad, sel.labels, selection_radii)
            else:
                edges = candidate_edges(z, k, top, p)
                table[name] = _cross_fit_accuracy(
                    calib, p, z, scores, edges, epsilon, selection_radii, seed
                )
        # ties: fewer bins, then no top bin
        chosen = max(rules, key=lambda r: (table[_candidate_name(*r)], -r[0], r[1] is None))
    k, top = chosen
    edges = candidate_edges(z[select] if cut else z[fit], k, top, p)
    rule = fit_binned_shifts(z[fit], scores[fit], edges, epsilon)
    served_rule = rule if edges else rule.shifts[0]
    violations = scores[fit] > rule.at(z[fit])
    raw = float(np.mean(scores > 0))
    return RuleFit(served_rule, k, top, table, fit, float(violations.mean()), raw)


def _candidate_name(bins: int, top: float | None) -> str:
    """How the selection table names a candidate rule: "3", or "3+top0.1" with a top bin."""
    return str(bins) if top is None else f"{bins}+top{top:g}"


def fit_configured(calib: Evidence, p: Protocol, c) -> RuleFit:
    """`fit_rule` with the settings of a `CalibrateConfig` `c`."""
    return fit_rule(
        calib,
        p,
        epsilon=c.epsilon,
        candidates=c.bins,
        selection_fraction=c.selection_fraction,
        selection_radii=c.selection_radii,
        seed=c.seed,
        top_bins=c.top_bins,
    )


def fit_and_score(
    sets: dict[str, Evidence], p: Protocol, c, radii, scored=("evaluation", "holdout")
) -> tuple[RuleFit, dict[str, dict]]:
    """The rule `fit_configured` chooses on `sets["calibration"]` with the calibrate settings
    `c`, and `summary_tables` under it for each set of `scored` that has images."""
    fit = fit_configured(sets["calibration"], p, c)
    return fit, {
        name: summary_tables(sets[name], p, fit.rule, radii)
        for name in scored
        if name in sets and len(sets[name])
    }


def compare(served, mc) -> dict:
    """Certificate-level agreement of a served rule (pred, radius) with Monte-Carlo's."""
    (pred, rad), (mc_pred, mc_rad) = served, mc
    same = pred == mc_pred
    under = same & (mc_pred >= 0) & (rad < mc_rad - 1e-12)
    return {
        "overestimation_rate": float(overestimated(pred, rad, mc_pred, mc_rad).mean()),
        "underestimation_rate": float(under.mean()),
        "mean_abs_radius_error": float(np.abs(rad - mc_rad).mean()),
        "abstention_agreement": float(((pred < 0) == (mc_pred < 0)).mean()),
        "certificate_class_agreement": float(same.mean()),
    }


def tables(e: Evidence, p: Protocol, rule: float | ShiftRule, radii) -> dict:
    """Certified accuracy of Monte-Carlo, raw and served rules; agreement; over-estimation."""
    mc_pred, _, mc_rad = e.monte_carlo(p)
    methods = {
        "monte_carlo": (mc_pred, mc_rad),
        "surrogate_raw": e.served(p)[::2],
        "surrogate_calibrated": e.served(p, rule)[::2],
    }
    acc = {name: accuracy_table(*curve, e.labels, radii) for name, curve in methods.items()}
    return {
        "images": len(e),
        "certified_accuracy": {name: a[0] for name, a in acc.items()},
        "certified_accuracy_stderr": {name: a[1] for name, a in acc.items()},
        "top1_agreement": float(np.mean(e.probs.argmax(1) == e.counts.argmax(1))),
        "clean_accuracy_of_top_class": {
            "monte_carlo": float(np.mean(e.counts.argmax(1) == e.labels)),
            "surrogate": float(np.mean(e.probs.argmax(1) == e.labels)),
        },
        "versus_monte_carlo": {
            name: compare(methods[name], methods["monte_carlo"])
            for name in ("surrogate_raw", "surrogate_calibrated")
        },
        "curves": methods,
    }


def summary_tables(e: Evidence, p: Protocol, rule: float | ShiftRule, radii) -> dict:
    """`tables` without the per-image curves: what reports and the evidence commands keep."""
    return {k: v for k, v in tables(e, p, rule, radii).items() if k != "curves"}
