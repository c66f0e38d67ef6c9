"""Reuse a committed bundle's Monte-Carlo evidence in another bundle's work folder.

A bundle that keeps another's base network, protocol, images and seeds (a probe head on the
cifar10-sigma0.5 networks, say) would draw the very same CERTIFY runs again: hours on CPU cores
for 5,000 calibration images that a GPU labelled. `reuse` writes the source bundle's per-image
counts (`evidence.npz`) as finished chunks of the calibrate and evaluate stages' folders, so those
stages resume from them and sample nothing. It refuses unless the work folder's base graph is
byte for byte the source's, the protocol, data selection and seeds in the source's manifest are
the config's, and every image set has the source's labels, image for image.

Each chunk says where it came from (`sampler`: "<sampler> via <bundle> <version>"), and so does
the report built from it; its per-image seconds are the source set's mean (the evidence keeps
only per-set totals, in report.json).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from exporter import data as data_stage
from exporter import executor, onnx_export
from exporter.certify_images import (
    CHUNK,
    chunk_path,
    folder_stamp,
    images_digest,
    write_chunk,
)
from exporter.config import Config, DataConfig
from exporter.evaluate import EVIDENCE, MONTE_CARLO
from exporter.fidelity import load_evidence

log = logging.getLogger(__name__)
# data fields that decide which images land in which set (root is only where they are read from)
SELECTION = (
    "train_per_class",
    "test_per_class",
    "calibration_images",
    "calibration_test_images",
    "holdout_images",
    "extra_calibration_test_images",
    "extra_holdout_images",
    "eval_every",
    "eval_images",
    "seed",
)
# fields by which an image set only grows at its end: a config with more takes the source's
# counts for the images the source had, and its stages certify the rest
GROWS = ("extra_holdout_images",)


def seeds(cfg: Config) -> dict[str, int]:
    """{image set: the CERTIFY seed of its chunk folder}, as the calibrate and evaluate stages
    use them."""
    return {
        "calibration": cfg.calibrate.seed,
        "evaluation": cfg.evaluate.seed,
        "holdout": cfg.evaluate.seed + 1,
    }


def mismatches(cfg: Config, source: dict) -> list[str]:
    """What differs between `cfg` and the config in the source bundle's manifest, among what the
    Monte-Carlo results depend on (empty: the source's results are this config's)."""
    mine = cfg.to_dict()
    bad = [
        f"bundle.{k}"
        for k in ("sigma", "n0", "n", "alpha")
        if mine["bundle"][k] != source["bundle"][k]
    ]
    # a field newer than the source's exporter has its default there
    default = asdict(DataConfig())
    theirs = {k: source["data"].get(k, default[k]) for k in SELECTION}
    bad += [f"data.{k}" for k in SELECTION if k not in GROWS and mine["data"][k] != theirs[k]]
    bad += [f"data.{k}" for k in GROWS if mine["data"][k] < theirs[k]]
    bad += [f"{s}.seed" for s in ("calibrate", "evaluate") if mine[s]["seed"] != source[s]["seed"]]
    return bad


def reuse(cfg: Config, work: Path, source: Path) -> dict[str, int]:
    """Write the source bundle's evidence as finished Monte-Carlo chunks in `work`; returns
    {image set: images}. The data and export-base stages must have run in `work`."""
    manifest = json.loads((source / "manifest.json").read_text())
    made_with = (manifest.get("exporter") or {}).get("config")
    if not made_with or not (source / EVIDENCE).exists():
        raise ValueError(f"{source}: no exporter config in its manifest or no {EVIDENCE}")
    bad = mismatches(cfg, made_with)
    if bad:
        raise ValueError(f"{source}: its Monte-Carlo was run with another {', '.join(bad)}")
    base = onnx_export.graph(work, "base")
    if base.read_bytes() != (source / manifest["graphs"]["base"]["file"]).read_bytes():
        raise ValueError(
            f"{base}: not the base graph of {source}; import it with train_base.from_onnx"
        )
    report = json.loads((source / "report.json").read_text())
    sets = load_evidence(source / EVIDENCE)
    ds = data_stage.load(work)
    splits = {"calibration": ds.calib, "evaluation": ds.eval, "holdout": ds.holdout}
    origin = f"via {manifest['name']} {manifest['version']}"
    for name, evidence in sets.items():  # every check before any chunk is written
        labels = splits[name].labels[: len(evidence)]  # a grown set begins with the source's
        if not np.array_equal(labels, evidence.labels):
            raise ValueError(f"{source}: its {name} images are not this config's (labels differ)")
        out_dir = work / MONTE_CARLO[name]
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir}: already holds chunks; delete it to reuse {source}")
    written = {}
    for name, evidence in sets.items():
        split, out_dir = splits[name], work / MONTE_CARLO[name]
        executor.claim_folder(out_dir, folder_stamp(base, cfg.bundle, seeds(cfg)[name]))
        drawn_by = report.get("monte_carlo_samplers", {}).get(name, {"numpy": 0})
        sampler = f"{'+'.join(drawn_by)} {origin}"
        per_image = report.get("monte_carlo_seconds", {}).get(name, float("nan")) / len(evidence)
        for index, start in enumerate(range(0, len(evidence), CHUNK)):
            rows = slice(start, start + CHUNK)
            arrays = {
                "counts0": evidence.counts0[rows],
                "counts": evidence.counts[rows],
                "seconds": np.full(len(evidence.labels[rows]), per_image),
            }
            digest = images_digest(split.images[rows])
            write_chunk(chunk_path(out_dir, index), arrays, digest, sampler)
        written[name] = len(evidence)
        log.info(
            "reuse: %d %s images' Monte-Carlo from %s (%s)", len(evidence), name, source, sampler
        )
    return written
