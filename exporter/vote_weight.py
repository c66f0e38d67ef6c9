"""Score a probe bundle's candidate vote weights by the calibrate stage's own criterion.

    python -m exporter.vote_weight models/cifar10-sigma0.25-probes512 [--weights 0 0.25 0.5 0.75 1]

A probe graph serves probs + w * (votes - probs): the head's probabilities with a share w of
the probes' vote shares (`exporter.probes`), w one named constant of the graph. Which w? The
one whose calibrated rule certifies most, judged as the calibrate stage judges its bin counts:
the cross-fit mean certified accuracy on the calibration images (`exporter.fidelity.fit_rule`,
with the calibrate settings the bundle's manifest records). For that, the bundle's graph answers
its calibration, evaluation and hold-out images (read again with its recorded data config, and
checked against its evidence: the labels, and the graph at its own weight answering as the
evidence records) twice, at w = 0 and w = 1; every candidate's answers are those two mixed, as
the graph mixes them (to float rounding). Each candidate is then calibrated on the calibration
images and scored on the others with the evaluate stage's tables, for the record: only the
cross-fit score picks the weight, and the chosen one is built by setting
`train_surrogate.vote_weight` (the head is not trained again) and running export-surrogate,
calibrate, bundle and evaluate, so the bundle's own report has the final word.
Costs two passes of the graph over every image: 5 min for 7,500 images at 512 probes on the
2-core VM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from accsmooth.bundle import EVIDENCE, read_manifest
from exporter import probes
from exporter.calibrate import surrogate_probabilities
from exporter.ceiling import render_rows
from exporter.cli import print_and_save
from exporter.compare import check_read_again, image_sets
from exporter.config import CalibrateConfig, read_section, recorded
from exporter.fidelity import Evidence, Protocol, fit_and_score, load_evidence
from exporter.report import load_report, report_radii

DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def components(graph: onnx.ModelProto, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the head's probabilities, the probes' vote shares) [N,C] of a probe graph on uint8
    images: its answers at w = 0 and w = 1."""
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for weight in (0.0, 1.0):
            path = Path(tmp) / f"w{weight:g}.onnx"
            onnx.save(probes.with_vote_weight(graph, weight), path)
            out.append(surrogate_probabilities(path, images))
    return out[0], out[1]


def mixed(head: np.ndarray, votes: np.ndarray, weight: float) -> np.ndarray:
    """What the graph serves at `weight`, in its own order of operations."""
    return head + np.float32(weight) * (votes - head)


def weigh(bundle: Path, weights=DEFAULT_WEIGHTS, data_dir: Path | None = None) -> list[dict]:
    """One row per weight: the calibration rule chosen for it, its cross-fit score, and the
    evaluate stage's tables (curves left out) on the evaluation and hold-out images."""
    manifest = read_manifest(bundle)
    graph = onnx.load(bundle / manifest.graphs.surrogate.file)
    own = probes.graph_vote_weight(graph)
    if own is None:
        raise ValueError(f"{bundle}: its surrogate graph has no vote weight to set")
    made_with = recorded(manifest, "calibrate", bundle)
    calibrate = read_section(CalibrateConfig, made_with, f"{bundle}: calibrate")
    protocol = Protocol.of(manifest)
    radii = report_radii(load_report(bundle))
    evidence = load_evidence(bundle / EVIDENCE)
    splits = image_sets(bundle, manifest, data_dir)
    parts = {}
    for name, e in evidence.items():
        if not len(e.labels):
            continue
        head, votes = components(graph, splits[name].images)
        check_read_again(bundle, name, e, splits[name].labels, mixed(head, votes, own))
        parts[name] = (e, head, votes)
    rows = []
    for weight in weights:
        sets = {
            name: Evidence(e.labels, e.counts0, e.counts, mixed(head, votes, weight))
            for name, (e, head, votes) in parts.items()
        }
        fit, scored = fit_and_score(sets, protocol, calibrate, radii)
        rows.append(
            {
                "vote_weight": weight,
                "bins": fit.bins,
                "top_bin": fit.top,
                "score": fit.score,
                "sets": scored,
            }
        )
    return rows


def render(rows: list[dict]) -> str:
    scores = [r["score"] for r in rows if r["score"] is not None]
    best = max(scores) if scores else None
    table = render_rows(
        rows,
        "vote weight",
        lambda row: (
            f"**{row['vote_weight']:g}**" if row["score"] == best else f"{row['vote_weight']:g}"
        ),
        monte_carlo="Monte-Carlo",
    )
    chosen = next((r["vote_weight"] for r in rows if r["score"] == best), None)
    if chosen is None:
        return table + "\n\none calibration rule and no cross-fit: no weight to choose"
    return table + f"\n\nchosen by the calibration cross-fit: vote weight {chosen:g} (bold)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.vote_weight",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path, help="a probe bundle, its evidence.npz beside it")
    parser.add_argument("--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS))
    parser.add_argument("--data-dir", type=Path, help="ImageFolder root (default: the manifest's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if not all(0.0 <= w <= 1.0 for w in args.weights):
        parser.error("--weights must lie in [0, 1]")
    return print_and_save(
        lambda: weigh(args.bundle, tuple(args.weights), args.data_dir), render, args.json
    )


if __name__ == "__main__":
    sys.exit(main())
