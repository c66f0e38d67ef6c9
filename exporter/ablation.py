"""The fidelity ablation: which lever (targets, loss, calibration rule) bought what.

    python -m exporter.ablation models/cifar10-sigma0.25 \
        --variant "N=32, CE (previous bundle)=work/v1-surrogate.onnx" \
        --variant "N=256+512, CE=work/v2-ce/surrogate.onnx" ...

Every variant is a surrogate graph; each is scored with the bundle's Monte-Carlo evidence
(`evidence.npz`: the same calibration, evaluation and hold-out images, the same counts) under
three calibration rules: one split-conformal shift, two Mondrian bins, and the bin count the
calibrate stage would choose (`exporter.fidelity.fit_rule`), each on the same calibration
images. The surrogates'
outputs are saved in `ablation.npz` beside the evidence, so `python -m exporter.tables` can
recompute the table without any network; the figures go to `ablation.json`, which the report
renders. `--append` keeps the variants scored before (from their saved outputs) and adds rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from accsmooth.bundle import EVIDENCE, read_manifest
from accsmooth.smoothing import ShiftRule
from exporter.config import load_config
from exporter.fidelity import Evidence, Protocol, fit_configured, load_evidence, tables
from exporter.report import ablation_table, render

ABLATION_NPZ, ABLATION_JSON = "ablation.npz", "ablation.json"
RADII = (0.0, 0.25, 0.5, 0.75)


def rules(calib: Evidence, protocol: Protocol, calibrate) -> dict:
    """{rule name: fitted rule}: one shift, two bins, and the bin count the calibrate settings
    choose (what the calibrate stage would ship)."""

    def fitted(bins):
        return fit_configured(calib, protocol, dataclasses.replace(calibrate, bins=bins))

    return {
        "one shift": fitted((1,)),
        "Mondrian, 2 bins": fitted((2,)),
        "Mondrian, bins chosen": fit_configured(calib, protocol, calibrate),
    }


def score(sets: dict[str, Evidence], protocol: Protocol, calibrate) -> list[dict]:
    """One row per calibration rule: certified accuracy (eval, hold-out), over-estimation."""
    rows = []
    for name, fit in rules(sets["calibration"], protocol, calibrate).items():
        row = {
            "rule": name,
            "bins": fit.bins,
            "shifts": list(fit.rule.shifts) if isinstance(fit.rule, ShiftRule) else [fit.rule],
        }
        for set_name in ("evaluation", "holdout"):
            if set_name in sets:
                t = tables(sets[set_name], protocol, fit.rule, RADII)
                row[set_name] = {
                    "certified_accuracy": t["certified_accuracy"],
                    "top1_agreement": t["top1_agreement"],
                    "overestimation_rate": t["versus_monte_carlo"]["surrogate_calibrated"][
                        "overestimation_rate"
                    ],
                }
        rows.append(row)
    return rows


def with_probs(sets: dict[str, Evidence], probs: dict[str, np.ndarray]) -> dict[str, Evidence]:
    return {name: Evidence(e.labels, e.counts0, e.counts, probs[name]) for name, e in sets.items()}


def recompute(bundle: Path) -> dict:
    """ablation.json's content from evidence.npz + ablation.npz (no network, no sampling)."""
    manifest = read_manifest(bundle)
    meta = json.loads((bundle / ABLATION_JSON).read_text())
    calibrate = load_config(None, meta["calibrate_overrides"]).calibrate
    protocol = Protocol.of(manifest)
    sets = load_evidence(bundle / EVIDENCE)
    stored = np.load(bundle / ABLATION_NPZ)
    variants = []
    for i, v in enumerate(meta["variants"]):
        probs = {name: stored[f"{i}_{name}"].astype(np.float64) for name in sets}
        variants.append(
            {"name": v["name"], "rows": score(with_probs(sets, probs), protocol, calibrate)}
        )
    return {**meta, "variants": variants}


def main(argv: list[str] | None = None) -> int:
    from exporter import bundle as bundle_stage
    from exporter import data as data_stage
    from exporter.calibrate import surrogate_probabilities

    parser = argparse.ArgumentParser(prog="python -m exporter.ablation", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="the bundle's work folder")
    parser.add_argument("--config", required=True, help="the bundle's preset")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=ONNX")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the variants already scored (their saved outputs) and add these after them",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    ds = data_stage.load(args.work)
    splits = {"calibration": ds.calib, "evaluation": ds.eval, "holdout": ds.holdout}
    arrays, names = {}, []
    if args.append and (args.bundle / ABLATION_NPZ).exists():
        with np.load(args.bundle / ABLATION_NPZ) as saved:
            arrays = {key: saved[key] for key in saved.files}
        names = [
            v["name"] for v in json.loads((args.bundle / ABLATION_JSON).read_text())["variants"]
        ]
    for i, spec in enumerate(args.variant, start=len(names)):
        name, _, path = spec.rpartition("=")
        names.append(name)
        for set_name, split in splits.items():
            if len(split.labels):
                probs = surrogate_probabilities(Path(path), split.images)
                arrays[f"{i}_{set_name}"] = probs.astype(np.float32)
    np.savez_compressed(args.bundle / ABLATION_NPZ, **arrays)
    c = cfg.calibrate
    overrides = [
        f"calibrate.epsilon={c.epsilon}",
        f"calibrate.bins={','.join(map(str, c.bins))}",
        f"calibrate.selection_fraction={c.selection_fraction}",
        f"calibrate.selection_radii={','.join(map(str, c.selection_radii))}",
        f"calibrate.seed={c.seed}",
    ]
    meta = {"calibrate_overrides": overrides, "variants": [{"name": n} for n in names]}
    (args.bundle / ABLATION_JSON).write_text(json.dumps(meta))
    result = recompute(args.bundle)
    (args.bundle / ABLATION_JSON).write_text(json.dumps(result, indent=2) + "\n")
    render(args.bundle)
    bundle_stage.rehash(args.bundle)  # the manifest lists ablation.npz/json, report.md anew
    print(ablation_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
