"""Recompute a bundle's report tables from its `evidence.npz`, without sampling.

    python -m exporter.tables models/cifar10-sigma0.25          # print report.md's tables
    python -m exporter.tables models/cifar10-sigma0.25 --check  # exit 1 if report.json differs

The evidence holds each image set's labels, Monte-Carlo counts (n0 and n rounds) and surrogate
probabilities; with the manifest's protocol and calibration rule that is everything a table of
the report is computed from (`exporter.fidelity.tables`, the same code the evaluate stage runs).
`--check` also fits the calibration rule again from the calibration images' evidence and
compares it with the manifest's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from accsmooth.bundle import EVIDENCE, read_manifest
from accsmooth.smoothing import ShiftRule
from exporter import ablation
from exporter.ablation import ABLATION_JSON
from exporter.config import CalibrateConfig, read_section, recorded
from exporter.fidelity import Protocol, fit_configured, load_evidence, summary_tables
from exporter.report import ablation_table, load_report, report_radii

# the report.json keys that come from the evidence alone (speed and environment do not)
RECOMPUTED = ("images", "certified_accuracy", "top1_agreement", "versus_monte_carlo")


def recompute(bundle: Path) -> dict[str, dict]:
    """{image set: tables} for every set in the bundle's evidence."""
    manifest = read_manifest(bundle)
    protocol = Protocol.of(manifest)
    report = load_report(bundle)
    radii = report_radii(report)
    return {
        name: summary_tables(e, protocol, manifest.shift, radii)
        for name, e in load_evidence(bundle / EVIDENCE).items()
    }


def _close(a, b) -> bool:
    """Equal JSON values, numbers to rounding."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def refit_calibration(bundle: Path) -> float | ShiftRule:
    """The served calibration rule fitted again, as the calibrate stage fitted it, from the first
    `calibration.images` calibration images of the evidence (`set_size` for bundles that predate
    that field and fitted one shift on all of theirs) with the calibrate settings the manifest
    records."""
    manifest = read_manifest(bundle)
    protocol = Protocol.of(manifest)
    cal = manifest.calibration
    images = (cal.model_extra or {}).get("images", cal.set_size)
    calib = load_evidence(bundle / EVIDENCE)["calibration"].subset(np.arange(images))
    made_with = recorded(manifest, "calibrate", bundle)
    c = read_section(CalibrateConfig, made_with, f"{bundle}: calibrate")
    return fit_configured(calib, protocol, c).rule


def _rule_values(rule) -> list:
    return [list(rule.edges), list(rule.shifts)] if isinstance(rule, ShiftRule) else [rule]


def differences(bundle: Path) -> list[str]:
    """The report.json entries that the evidence does not reproduce (empty: all match)."""
    report = load_report(bundle)
    sets = recompute(bundle)
    stored = {"evaluation": report, "holdout": report.get("holdout") or None}
    bad = []
    for name, computed in sets.items():
        if name not in stored:
            continue
        bad += [f"{name}.{k}" for k in RECOMPUTED if not _close(computed[k], stored[name][k])]
    manifest = read_manifest(bundle)
    served = _rule_values(manifest.shift)
    if manifest.calibration and not _close(_rule_values(refit_calibration(bundle)), served):
        bad.append("calibration")
    if (bundle / ABLATION_JSON).exists():
        stored_ablation = json.loads((bundle / ABLATION_JSON).read_text())
        if not _close(ablation.recompute(bundle), stored_ablation):
            bad.append("ablation")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.tables", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--check", action="store_true", help="compare with report.json")
    args = parser.parse_args(argv)
    if args.check:
        bad = differences(args.bundle)
        print("report.json matches the evidence" if not bad else f"differs: {', '.join(bad)}")
        return 1 if bad else 0
    for name, t in recompute(args.bundle).items():
        radii = list(t["certified_accuracy"]["monte_carlo"])
        print(f"\n{name}: {t['images']} images, top-1 agreement {t['top1_agreement']:.3f}")
        print("| method | " + " | ".join(f"r = {r}" for r in radii) + " | over-estimation |")
        print("|---|" + "---|" * (len(radii) + 1))
        for method, row in t["certified_accuracy"].items():
            over = t["versus_monte_carlo"].get(method, {}).get("overestimation_rate")
            cells = " | ".join(f"{100 * row[r]:.1f}%" for r in radii)
            print(f"| {method} | {cells} | {'' if over is None else f'{100 * over:.1f}%'} |")
    if (args.bundle / ABLATION_JSON).exists():
        print("\nablation (served certified accuracy):")
        print(ablation_table(ablation.recompute(args.bundle)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
