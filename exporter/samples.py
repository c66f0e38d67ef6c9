"""The web page's sample images, picked by what the served rule says about them.

    python -m exporter.samples models/cifar10-sigma0.25 --work work/cifar10-sigma0.25 \
        --out server/static/samples

From the bundle's evaluation images, with the served (calibrated) rule of the bundle itself:
two clear certificates (true class, the largest radii, of different classes), one small
certificate (true class, radius under SMALL) and one abstention, in that order. Writes one PNG
each and `samples.json`, the list the page shows, each entry labelled with what it shows;
`tests/models/test_default_bundle.py` checks that the served answers still say so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from accsmooth.bundle import read_manifest
from accsmooth.smoothing import certify_from_probabilities
from exporter import data as data_stage
from exporter.calibrate import surrogate_probabilities

SMALL = 0.15  # a "small" certificate: positive radius below this (pixels in [0, 1])
MANIFEST = "samples.json"


def pick(labels, certificates) -> list[tuple[int, str]]:
    """(image index, kind) of the samples, in the order the page shows them."""
    radius = np.array([c.radius for c in certificates])
    right = np.array([c.predicted_class == y for c, y in zip(certificates, labels, strict=True)])
    chosen: list[tuple[int, str]] = []
    for i in np.argsort(-radius):  # the clearest two, of different classes
        if right[i] and all(labels[i] != labels[j] for j, _ in chosen):
            chosen.append((int(i), "clear"))
        if len(chosen) == 2:
            break
    small = np.flatnonzero(right & (radius > 0) & (radius < SMALL))
    abstain = np.flatnonzero([c.abstained for c in certificates])
    if len(small):
        chosen.append((int(small[np.argmax(radius[small])]), "small"))
    if len(abstain):
        chosen.append((int(abstain[0]), "abstains"))
    return chosen


def caption(kind: str, label: str, radius: float) -> str:
    if kind == "abstains":
        return f"{label}: the smoothed classifier abstains (no class is certain under noise)"
    what = "clear certificate" if kind == "clear" else "small certificate"
    return f"{label}: {what}, radius {radius:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.samples", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("server/static/samples"))
    args = parser.parse_args(argv)
    manifest = read_manifest(args.bundle)
    ds = data_stage.load(args.work)
    probs = surrogate_probabilities(args.bundle / manifest.graphs.surrogate.file, ds.eval.images)
    p = manifest.protocol
    certs = certify_from_probabilities(probs, p.n, p.alpha, manifest.sigma, manifest.shift)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.png"):
        old.unlink()
    entries = []
    for i, kind in pick(ds.eval.labels, certs):
        label = ds.classes[ds.eval.labels[i]]
        name = f"{kind}-{label}.png"
        Image.fromarray(ds.eval.images[i].transpose(1, 2, 0)).save(args.out / name)
        entries.append(
            {
                "file": name,
                "kind": kind,
                "label": label,
                "radius": round(certs[i].radius, 3),
                "caption": caption(kind, label, certs[i].radius),
            }
        )
    (args.out / MANIFEST).write_text(json.dumps(entries, indent=2) + "\n")
    print(json.dumps(entries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
