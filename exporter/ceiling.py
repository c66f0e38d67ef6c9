"""What served fidelity K passes of the base could buy, from a bundle's evidence alone.

    python -m exporter.ceiling models/cifar10-sigma0.25-probes [--votes 16 64 256] [--seed 0]

The served rule trails Monte-Carlo by the calibration shift, and the shift is set by the tail
of the surrogate's error on Phi^-1(p_A). How small can that tail get for a surrogate that runs
the base K times? This answers it in a synthetic world built from the bundle's Monte-Carlo
counts, without sampling the network: each image's smoothed class frequencies are taken to be
its n-round frequencies p (the best estimate of them there is), and on every image set
- Monte-Carlo is drawn again from p: n0 and n multinomial counts, as CERTIFY draws them;
- the K-vote surrogate answers the shares of K multinomial draws from p: K passes of the base
  on fresh noise, votes only, no network;
- the exact surrogate answers p itself, the limit no finite K reaches.
Each surrogate is calibrated on the calibration images with the calibrate settings the bundle's
manifest records (`exporter.fidelity.fit_configured`) and scored on the evaluation and hold-out
images with the evaluate stage's tables, so its figures read like a report's.

Votes alone are the crudest use of K passes, and they are fresh draws here where a probe graph's
are fixed: measured on sigma 0.25's real counts, the probe head served much closer than the
vote rows at 16 probes (gap at r = 0: 6.8 points against 12.5) and about as close at 256 with
half its output votes (3.3 against 2.4), and only a head serves the top of the range at small
K (docs/results.md). So read a row as the order of the K a goal needs, not as a bound.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accsmooth.bundle import EVIDENCE, read_manifest
from exporter.cli import print_and_save
from exporter.config import CalibrateConfig, read_section, recorded
from exporter.fidelity import Evidence, Protocol, fit_and_score, load_evidence
from exporter.report import load_report, report_radii

SETS = ("evaluation", "holdout")
DEFAULT_VOTES = (16, 32, 64, 128, 256, 1024, 4096)


@dataclass(frozen=True)
class World:
    """One image set's smoothed frequencies p [M,C] and Monte-Carlo drawn again from them."""

    labels: np.ndarray
    p: np.ndarray
    counts0: np.ndarray
    counts: np.ndarray

    def with_surrogate(self, probs) -> Evidence:
        return Evidence(self.labels, self.counts0, self.counts, probs)


def world(e: Evidence, n0: int, rng: np.random.Generator) -> World:
    """The set's frequencies from its n-round counts, and CERTIFY's two rounds drawn from them."""
    n = e.counts.sum(1, keepdims=True)
    p = e.counts / n
    return World(e.labels, p, rng.multinomial(n0, p), rng.multinomial(n[:, 0], p))


def vote_shares(p, k: int, rng: np.random.Generator) -> np.ndarray:
    """What a surrogate that counts K fresh noisy votes of the base answers: their shares."""
    return rng.multinomial(k, p) / k


def ceiling(
    sets: dict[str, Evidence],
    protocol: Protocol,
    n0: int,
    calibrate: CalibrateConfig,
    radii,
    votes=DEFAULT_VOTES,
    seed: int = 0,
) -> list[dict]:
    """One row per surrogate (each K in `votes`, then the exact one): its chosen calibration
    rule and, per scored set, the evaluate stage's tables (curves left out)."""
    rng = np.random.default_rng(seed)
    worlds = {name: world(e, n0, rng) for name, e in sets.items()}
    rows = []
    for k in (*votes, None):
        answers = {
            name: w.with_surrogate(w.p if k is None else vote_shares(w.p, k, rng))
            for name, w in worlds.items()
        }
        fit, scored = fit_and_score(answers, protocol, calibrate, radii, SETS)
        rows.append({"votes": k, "bins": fit.bins, "top_bin": fit.top, "sets": scored})
    return rows


def for_bundle(bundle: Path, votes=DEFAULT_VOTES, seed: int = 0) -> list[dict]:
    """`ceiling` on a bundle's evidence, protocol, recorded calibrate settings and radii."""
    manifest = read_manifest(bundle)
    made_with = recorded(manifest, "calibrate", bundle)
    calibrate = read_section(CalibrateConfig, made_with, f"{bundle}: calibrate")
    protocol = Protocol.of(manifest)
    radii = report_radii(load_report(bundle))
    sets = load_evidence(bundle / EVIDENCE)
    return ceiling(sets, protocol, manifest.protocol.n0, calibrate, radii, votes, seed)


def render(rows: list[dict]) -> str:
    """A markdown table per scored set: served accuracy, its gap to Monte-Carlo, over-claims."""
    return render_rows(
        rows,
        "surrogate",
        lambda row: "exact frequencies" if row["votes"] is None else f"{row['votes']:,} votes",
    )


def render_rows(rows: list[dict], header: str, label, monte_carlo="Monte-Carlo drawn again") -> str:
    """`render` for rows {"bins", "top_bin", "sets": {name: tables}} named by `label(row)` in a
    first column headed `header`, the Monte-Carlo row's accuracy introduced as `monte_carlo`;
    with a calibration cross-fit "score" column where rows carry one (None: one candidate rule,
    nothing chosen)."""
    scored = "score" in rows[0]
    out = []
    for name in rows[0]["sets"]:
        first = rows[0]["sets"][name]
        radii = list(first["certified_accuracy"]["monte_carlo"])
        mc_row = first["certified_accuracy"]["monte_carlo"].values()
        mc = " / ".join(f"{100 * v:.1f}" for v in mc_row)
        out += [
            f"\n{name} ({first['images']} images), r = {' / '.join(radii)}; {monte_carlo}: {mc}",
            f"| {header} | calibration bins |{' cross-fit score |' if scored else ''} served "
            "| gap to Monte-Carlo | over-estimation | top-1 |",
            "|---|---|---|---|---|---|" + ("---|" if scored else ""),
        ]
        for row in rows:
            t = row["sets"][name]
            ca = t["certified_accuracy"]
            served = [ca["surrogate_calibrated"][r] for r in radii]
            gap = [ca["monte_carlo"][r] - s for r, s in zip(radii, served, strict=True)]
            over = t["versus_monte_carlo"]["surrogate_calibrated"]["overestimation_rate"]
            bins = f"{row['bins']}" + ("" if row["top_bin"] is None else f"+top{row['top_bin']:g}")
            if scored:
                bins += " | -" if row["score"] is None else f" | {row['score']:.4f}"
            out.append(
                f"| {label(row)} | {bins} | {' / '.join(f'{100 * s:.1f}' for s in served)} "
                f"| {' / '.join(f'{100 * g:.1f}' for g in gap)} | {100 * over:.1f}% "
                f"| {100 * t['top1_agreement']:.1f}% |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--votes", type=int, nargs="+", default=list(DEFAULT_VOTES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if min(args.votes) < 1:
        parser.error("--votes must be positive")
    return print_and_save(
        lambda: for_bundle(args.bundle, tuple(args.votes), args.seed),
        render,
        args.json,
        errors=(ValueError, OSError, KeyError),
    )


if __name__ == "__main__":
    sys.exit(main())
