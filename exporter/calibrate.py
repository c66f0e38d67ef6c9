"""Stage 7, calibrate: the conformal shift q that bounds how often served radii over-claim.

On held-out images that neither network saw, compute real CERTIFY results (the bundle's n0, n,
alpha) on the base model, and the surrogate's raw served bound p_raw for each. A served
certificate with shift q over-claims when its radius exceeds the Monte-Carlo radius, or when it
names another class with a positive radius; `accsmooth.smoothing.overestimation_scores` turns
that into one score per image, and the split-conformal quantile of those scores is q:
for a new image exchangeable with the calibration set, P(over-claim) <= epsilon. With several
candidate bin counts, one q per bin of the raw bound (Mondrian), chosen and fitted as
`exporter.fidelity.fit_rule` says.
Reads the two graphs through `onnx_export.graph`.
Artifact: `<work>/calibration.json`, read through `load(work)` (+ the Monte-Carlo results in
`<work>/calib_mc/`, which the evaluate stage reuses for the report's calibration images).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from accsmooth.runtime import OnnxPredictor, make_session
from accsmooth.smoothing import ShiftRule
from exporter import data as data_stage
from exporter import onnx_export
from exporter.certify_images import certify_all
from exporter.config import Config
from exporter.fidelity import Evidence, Protocol, fit_configured

log = logging.getLogger(__name__)
ARTIFACT, MONTE_CARLO = "calibration.json", "calib_mc"


def load(work: Path) -> dict:
    """calibration.json as the calibrate stage wrote it (method, epsilon, shift, set_size,
    images, violation rates, selection, and bin_edges/bin_shifts when binned)."""
    path = work / ARTIFACT
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the calibrate stage first")
    return json.loads(path.read_text())


def save(work: Path, result: dict) -> Path:
    path = work / ARTIFACT
    path.write_text(json.dumps(result, indent=2))
    return path


def surrogate_probabilities(onnx_path: Path, images_uint8: np.ndarray, batch: int = 64):
    """The surrogate graph's outputs [N,K] for uint8 images [N,C,H,W], `batch` images per call:
    a probe graph runs the base on K noisy copies of each, so a call holds K * batch images'
    activations (at K = 256, 500 images per call took more than the machine's 24 GiB)."""
    predict = OnnxPredictor(make_session(onnx_path))
    x = data_stage.to_float(images_uint8)
    return np.concatenate([predict(x[i : i + batch]) for i in range(0, len(x), batch)])


def evidence(cfg: Config, work: Path, split, name: str, seed: int, surrogate: Path) -> Evidence:
    """Monte-Carlo counts (resumable, in `<work>/<name>`) and surrogate outputs for one split."""
    mc = certify_all(
        onnx_export.graph(work, "base"),
        split.images,
        cfg.bundle,
        batch_size=cfg.calibrate.batch_size,
        seed=seed,
        out_dir=work / name,
        desc=f"{name}: Monte-Carlo",
    )
    probs = surrogate_probabilities(surrogate, split.images)
    return Evidence(split.labels, mc.counts0, mc.counts, probs), mc.seconds


def run(cfg: Config, work: Path) -> Path:
    b, c = cfg.bundle, cfg.calibrate
    ds = data_stage.load(work)
    surrogate = onnx_export.graph(work, "surrogate")
    calib, seconds = evidence(cfg, work, ds.calib, MONTE_CARLO, c.seed, surrogate)
    protocol = Protocol(b.n, b.alpha, b.sigma)
    fit = fit_configured(calib, protocol, c)
    binned = isinstance(fit.rule, ShiftRule)
    result = {
        "method": "mondrian-conformal" if binned else "split-conformal",
        "scale": "normal_quantile",  # served Phi^-1(pABar) = raw - shift: radius - sigma * shift
        "epsilon": c.epsilon,
        "shift": max(fit.rule.shifts) if binned else fit.rule,
        "set_size": int(len(fit.fit_rows)),
        "images": int(len(calib)),  # selection + fitting images: the first ones of the set
        "empirical_violation_rate": fit.empirical_violation_rate,
        "uncalibrated_violation_rate": fit.uncalibrated_violation_rate,
        "monte_carlo_seconds_per_image": float(seconds.mean()),
        "selection": {
            "images": int(len(calib) - len(fit.fit_rows)),
            "mean_certified_accuracy_by_bins": fit.selection,
            "radii": list(c.selection_radii),
            "bins": fit.bins,
            "top_bin": fit.top,
        },
    }
    if binned:
        result |= {"bin_edges": list(fit.rule.edges), "bin_shifts": list(fit.rule.shifts)}
    out = save(work, result)
    log.info(
        "calibrate: %s, shifts %s (epsilon %.3f, fitted on %d images); over-claims %.3f raw -> "
        "%.3f",
        result["method"],
        fit.rule.shifts if binned else f"{fit.rule:.4f}",
        c.epsilon,
        len(fit.fit_rows),
        result["uncalibrated_violation_rate"],
        result["empirical_violation_rate"],
    )
    return out
