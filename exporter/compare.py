"""Score several bundles' served rules on one bundle's Monte-Carlo evidence, without sampling.

    python -m exporter.compare models/cifar10-sigma0.25-probes models/cifar10-sigma0.25 [...]

Bundles that share a base graph, sigma and protocol stand in for the same Monte-Carlo
certificates, so the counts in one bundle's `evidence.npz` are every such bundle's ground truth
on those images. The first bundle named gives the evidence; its image sets (evaluation,
hold-out) are read again with the data config in its manifest (the data stage, into a temporary
folder; `--data-dir` where the images live elsewhere) and checked against the evidence: the
labels, and the first bundle's surrogate must answer as its evidence records.
Every bundle named, the first included, then answers them with its own surrogate graph and its
shipped calibration rule, and the report's tables follow at the first bundle's radii
(`exporter.fidelity.tables`, the code of the evaluate stage): certified accuracy of Monte-Carlo,
raw and served rules, over-estimation and top-1 agreement. A bundle with another base graph,
sigma or protocol is refused: the counts are not its certificates.

This is how bundles calibrated apart are compared on the same unseen images, such as the
2,000-image hold-out of `cifar10-sigma0.25-probes` for the default bundle (docs/results.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from accsmooth.bundle import EVIDENCE, Manifest, read_manifest, sha256_of
from exporter import data as data_stage
from exporter.calibrate import surrogate_probabilities
from exporter.cli import print_and_save
from exporter.config import DataConfig, read_section, recorded
from exporter.fidelity import Evidence, Protocol, load_evidence, summary_tables
from exporter.report import load_report, report_radii

SETS = ("evaluation", "holdout")  # the calibration images are each bundle's own fitting data


def _ground_truth(bundle: Path, manifest: Manifest) -> dict:
    """What a bundle's Monte-Carlo certificates depend on: protocol, sigma and base graph bytes."""
    return {
        "protocol.n0": manifest.protocol.n0,
        "protocol.n": manifest.protocol.n,
        "protocol.alpha": manifest.protocol.alpha,
        "sigma": manifest.sigma,
        "base graph": sha256_of(bundle / manifest.graphs.base.file),
    }


def image_sets(bundle: Path, manifest: Manifest, data_dir: Path | None) -> dict:
    """{set name: Split} of the bundle's calibration, evaluation and hold-out images, read again
    with the data config its exporter recorded."""
    made_with = recorded(manifest, "data", bundle)
    if data_dir is not None:
        made_with = {**made_with, "root": str(data_dir)}
    cfg = read_section(DataConfig, made_with, f"{bundle}: data")
    with tempfile.TemporaryDirectory() as tmp:
        data_stage.prepare(cfg, Path(tmp))
        ds = data_stage.load(Path(tmp))
    return {"calibration": ds.calib, "evaluation": ds.eval, "holdout": ds.holdout}


def check_read_again(bundle: Path, name: str, e: Evidence, labels, probs) -> None:
    """ValueError unless the `name` images read again (`labels`, and the bundle's surrogate
    answering `probs` on them) are the ones its evidence `e` was made on."""
    if not np.array_equal(labels, e.labels):
        raise ValueError(f"{bundle}: its {name} images read again have other labels")
    if not np.allclose(probs, e.probs, atol=1e-4):
        # its own graph must answer as the evidence says, or these are other images
        raise ValueError(
            f"{bundle}: its {name} images read again are not the ones its evidence was made "
            "on (its surrogate answers otherwise)"
        )


def compare(bundles: list[Path], data_dir: Path | None = None) -> dict[str, dict[str, dict]]:
    """{bundle name: {set name: tables}} on the first bundle's evidence."""
    source_dir, *_ = bundles
    manifests = {b: read_manifest(b) for b in bundles}
    source = manifests[source_dir]
    truth = _ground_truth(source_dir, source)
    for b, m in manifests.items():
        bad = [k for k, v in _ground_truth(b, m).items() if v != truth[k]]
        if bad:
            raise ValueError(f"{b}: another {', '.join(bad)} than {source_dir}")
    evidence = load_evidence(source_dir / EVIDENCE)
    splits = image_sets(source_dir, source, data_dir)
    protocol = Protocol.of(source)
    radii = report_radii(load_report(source_dir))
    out: dict[str, dict[str, dict]] = {}
    for b, m in manifests.items():
        out[m.name] = {}
        for name in SETS:
            e, split = evidence.get(name), splits[name]
            if e is None or not len(e.labels):
                continue
            probs = surrogate_probabilities(b / m.graphs.surrogate.file, split.images)
            if b == source_dir:  # the first bundle: the same images for every other one
                check_read_again(source_dir, name, e, split.labels, probs)
            answers = Evidence(e.labels, e.counts0, e.counts, probs)
            out[m.name][name] = summary_tables(answers, protocol, m.shift, radii)
    return out


def render(results: dict[str, dict[str, dict]]) -> str:
    lines = []
    for bundle, sets in results.items():
        for name, t in sets.items():
            ca = t["certified_accuracy"]
            radii = " / ".join(ca["monte_carlo"])
            served = t["versus_monte_carlo"]["surrogate_calibrated"]
            lines.append(f"{bundle}, {name} ({t['images']} images), r = {radii}:")
            for rule in ("monte_carlo", "surrogate_raw", "surrogate_calibrated"):
                row = " / ".join(f"{100 * v:.1f}" for v in ca[rule].values())
                lines.append(f"  {rule:22s} {row}")
            lines.append(
                f"  over-estimation {100 * served['overestimation_rate']:.2f}%, "
                f"top-1 agreement {100 * t['top1_agreement']:.1f}%"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundles", type=Path, nargs="+", help="the first gives the evidence")
    parser.add_argument("--data-dir", type=Path, help="ImageFolder root (default: the manifest's)")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    return print_and_save(lambda: compare(args.bundles, args.data_dir), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
