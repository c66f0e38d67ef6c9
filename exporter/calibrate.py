"""Stage 5, calibrate: the conformal shift q that bounds how often served radii over-claim.

On held-out images that neither network saw, compute real CERTIFY results (the bundle's n0, n,
alpha) on the base model, and the surrogate's raw served bound p_raw for each. A served
certificate with shift q over-claims when its radius exceeds the Monte-Carlo radius, or when it
names another class with a positive radius; `server.smoothing.overestimation_scores` turns that
into one score per image, and the split-conformal quantile of those scores is q:
for a new image exchangeable with the calibration set, P(over-claim) <= epsilon.
Artifact: `<work>/calibration.json` (+ the Monte-Carlo results in `<work>/calib_mc/`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from exporter import data as data_stage
from exporter.certify_images import certify_all
from exporter.config import Config
from exporter.onnx_export import ensure_onnx
from server.runtime import OnnxPredictor, make_session
from server.smoothing import fit_conformal_shift, overestimation_scores, surrogate_p_lower

log = logging.getLogger(__name__)


def surrogate_probabilities(onnx_path: Path, images_uint8: np.ndarray, batch: int = 500):
    predict = OnnxPredictor(make_session(onnx_path))
    x = data_stage.to_float(images_uint8)
    return np.concatenate([predict(x[i : i + batch]) for i in range(0, len(x), batch)])


def served_raw(probs: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(class, uncalibrated p_a_lower) the server would derive from surrogate outputs."""
    c = probs.argmax(1)
    return c, np.atleast_1d(surrogate_p_lower(probs[np.arange(len(probs)), c], n, alpha))


def run(cfg: Config, work: Path) -> Path:
    b, c = cfg.bundle, cfg.calibrate
    ds = data_stage.load(work)
    base = ensure_onnx(work, "base", cfg.export, ds.calib.images)
    surrogate = ensure_onnx(work, "surrogate", cfg.export, ds.calib.images)
    mc = certify_all(
        base,
        ds.calib.images,
        b,
        batch_size=c.batch_size,
        seed=c.seed,
        out_dir=work / "calib_mc",
        desc="calibrate: Monte-Carlo",
    )
    served_class, p_raw = served_raw(
        surrogate_probabilities(surrogate, ds.calib.images), b.n, b.alpha
    )
    scores = overestimation_scores(served_class, p_raw, mc.predicted, mc.p_a_lower)
    shift = fit_conformal_shift(scores, c.epsilon)
    result = {
        "method": "split-conformal",
        "scale": "normal_quantile",  # served Phi^-1(pABar) = raw - shift: radius - sigma * shift
        "epsilon": c.epsilon,
        "shift": shift,
        "set_size": int(len(scores)),
        "empirical_violation_rate": float(np.mean(scores > shift)),
        "uncalibrated_violation_rate": float(np.mean(scores > 0)),
        "monte_carlo_seconds_per_image": float(mc.seconds.mean()),
    }
    out = work / "calibration.json"
    out.write_text(json.dumps(result, indent=2))
    log.info(
        "calibrate: shift q = %.5f (epsilon %.3f, %d images); over-claims %.3f raw -> %.3f",
        shift,
        c.epsilon,
        len(scores),
        result["uncalibrated_violation_rate"],
        result["empirical_violation_rate"],
    )
    return out
