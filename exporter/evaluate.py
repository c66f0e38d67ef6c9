"""Stage 9, evaluate: how well the surrogate stands in for Monte-Carlo certification.

On the held-out evaluation subset (every k-th test image) and the hold-out test images no stage
uses, runs CERTIFY on the base model (the Monte-Carlo ground truth, the code of
/certify/sampled) and the served surrogate rule, raw and calibrated (the code of /certify), then
writes into the bundle: `evidence.npz` (per-image counts and surrogate outputs of the
calibration, evaluation and hold-out images, from which `python -m exporter.tables` recomputes
every table), `report.json`, `report.md`, `certified_accuracy.png`, and the manifest's summary.
Certified accuracy at r: the fraction of images certified with the true class and radius >= r.
Artifacts in the work folder: the Monte-Carlo results of the evaluation and hold-out images
(`eval_mc/`, `holdout_mc/`; the calibration images' are the calibrate stage's `calib_mc/`),
read through `monte_carlo_counts(work, set_name)`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from accsmooth.bundle import EVIDENCE, read_manifest
from accsmooth.runtime import OnnxPredictor, make_session
from accsmooth.smoothing import certify_from_probabilities, max_certifiable_radius
from exporter import bundle, calibrate
from exporter import data as data_stage
from exporter.calibrate import evidence
from exporter.certify_images import samplers, saved_counts
from exporter.config import Config
from exporter.fidelity import Protocol, save_evidence, tables
from exporter.report import render, save_report, write_plot

log = logging.getLogger(__name__)
MONTE_CARLO = {
    "calibration": calibrate.MONTE_CARLO,
    "evaluation": "eval_mc",
    "holdout": "holdout_mc",
}


def monte_carlo_counts(work: Path, set_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(counts0 [M,K], counts [M,K]) of the image set's ("calibration", "evaluation",
    "holdout") Monte-Carlo chunks written so far, in image order; None when there are none."""
    return saved_counts(work / MONTE_CARLO[set_name])


def time_served(surrogate: Path, images_uint8, n: int, alpha: float, sigma: float, shift):
    """Median seconds per image of the served rule: one batch-1 onnxruntime call plus the math
    (the median, so that other work on the machine moves it less than a mean)."""
    predict = OnnxPredictor(make_session(surrogate))
    x = data_stage.to_float(images_uint8)
    predict(x[:1])
    seconds = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        certify_from_probabilities(predict(x[i : i + 1]), n, alpha, sigma, shift)
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds))


def environment() -> dict:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {p: metadata.version(p) for p in ("onnxruntime", "numpy", "scipy", "torch")}
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def run(cfg: Config, work: Path, out: Path) -> Path:
    from exporter.pipeline import load_timings  # not at the top: the pipeline imports this module

    b, c = cfg.bundle, cfg.evaluate
    ds = data_stage.load(work)
    manifest = read_manifest(out)
    calibration, rule = manifest.calibration, manifest.shift
    surrogate = out / manifest.graphs.surrogate.file
    protocol = Protocol(b.n, b.alpha, b.sigma)
    sets, seconds = {}, {}
    for name, split, seed in (
        ("calibration", ds.calib, cfg.calibrate.seed),
        ("evaluation", ds.eval, c.seed),
        ("holdout", ds.holdout, c.seed + 1),
    ):
        if len(split.labels):
            folder = MONTE_CARLO[name]
            sets[name], seconds[name] = evidence(cfg, work, split, folder, seed, surrogate)
    save_evidence(out / EVIDENCE, sets)
    results = {name: tables(e, protocol, rule, c.radii) for name, e in sets.items()}
    main = results["evaluation"]
    served_s = time_served(surrogate, ds.eval.images[:200], b.n, b.alpha, b.sigma, rule)
    mc_s = seconds["evaluation"]
    report = {
        "bundle": b.name,
        "sigma": b.sigma,
        "protocol": {"n0": b.n0, "n": b.n, "alpha": b.alpha},
        "eval_every": cfg.data.eval_every,
        "calibration": calibration.model_dump() if calibration else None,
        **{k: v for k, v in main.items() if k != "curves"},
        "holdout": {k: v for k, v in results.get("holdout", {}).items() if k != "curves"},
        "seconds_per_image": {
            "monte_carlo": float(mc_s.mean()),
            "monte_carlo_std": float(mc_s.std()),
            "surrogate": served_s,
        },
        "speedup": float(mc_s.mean() / served_s),
        # CERTIFY's own compute per image set (sum of per-image wall times, resumed runs too),
        # and the work folder's stage times as last recorded (a resumed stage records only
        # what it had left to do)
        "monte_carlo_seconds": {name: float(t.sum()) for name, t in seconds.items()},
        # which sampler drew each set's chunks: numpy (onnxruntime on CPUs) or torch (a GPU)
        "monte_carlo_samplers": {name: samplers(work / MONTE_CARLO[name]) for name in sets},
        "stage_seconds": load_timings(work),
        "max_certifiable_radius": max_certifiable_radius(b.n, b.alpha, b.sigma),
        "max_radius_at_100k": max_certifiable_radius(100_000, b.alpha, b.sigma),
        "environment": environment(),
    }
    path = save_report(out, report)
    write_plot(out / "certified_accuracy.png", main["curves"], ds.eval.labels, b)
    render(out)  # with ablation.json's table when python -m exporter.ablation added one
    summary = {k: report[k] for k in ("images", "certified_accuracy", "top1_agreement", "speedup")}
    calibrated = report["versus_monte_carlo"]["surrogate_calibrated"]
    summary["overestimation_rate_calibrated"] = calibrated["overestimation_rate"]
    bundle.update_evaluation(out, summary)
    log.info("evaluate: %s", json.dumps(report["certified_accuracy"]))
    return path
