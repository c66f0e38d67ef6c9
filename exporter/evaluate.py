"""Stage 7, evaluate: how well the surrogate stands in for Monte-Carlo certification.

On the held-out evaluation subset (every k-th test image), runs CERTIFY on the base model (the
Monte-Carlo ground truth, the code of /certify/sampled) and the served surrogate rule, raw and
calibrated (the code of /certify), then writes into the bundle:
`report.json`, `report.md`, `certified_accuracy.png`, and the manifest's evaluation summary.
Certified accuracy at r: the fraction of images certified with the true class and radius >= r.
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

from exporter import data as data_stage
from exporter.bundle import read_manifest, write_manifest
from exporter.calibrate import served_raw, surrogate_probabilities
from exporter.certify_images import certify_all
from exporter.config import Config
from exporter.report import write_markdown, write_plot
from exporter.scoring import accuracy_table, overestimated
from server.runtime import OnnxPredictor, make_session
from server.smoothing import apply_shift, certify_from_probabilities, radius_from_p_lower

log = logging.getLogger(__name__)


def compare(served_pred, served_radius, mc) -> dict:
    """Certificate-level agreement of a served rule with Monte-Carlo, over the same images."""
    same = served_pred == mc.predicted
    over = overestimated(served_pred, served_radius, mc.predicted, mc.radius)
    under = same & (mc.predicted >= 0) & (served_radius < mc.radius - 1e-12)
    return {
        "overestimation_rate": float(over.mean()),
        "underestimation_rate": float(under.mean()),
        "mean_abs_radius_error": float(np.abs(served_radius - mc.radius).mean()),
        "abstention_agreement": float(((served_pred < 0) == (mc.predicted < 0)).mean()),
        "certificate_class_agreement": float(same.mean()),
    }


def time_served(surrogate: Path, images_uint8, n: int, alpha: float, sigma: float, shift: float):
    """Seconds per image of the served rule: one batch-1 onnxruntime call plus the math."""
    predict = OnnxPredictor(make_session(surrogate))
    x = data_stage.to_float(images_uint8)
    predict(x[:1])
    t0 = time.perf_counter()
    for i in range(len(x)):
        certify_from_probabilities(predict(x[i : i + 1]), n, alpha, sigma, shift)
    return (time.perf_counter() - t0) / len(x)


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
    b, c = cfg.bundle, cfg.evaluate
    ds = data_stage.load(work)
    manifest = read_manifest(out)
    shift = manifest["calibration"]["shift"] if manifest.get("calibration") else 0.0
    labels = ds.eval.labels
    mc = certify_all(
        out / "base.onnx",
        ds.eval.images,
        b,
        batch_size=c.batch_size,
        seed=c.seed,
        out_dir=work / "eval_mc",
        desc="evaluate: Monte-Carlo",
    )
    probs = surrogate_probabilities(out / "surrogate.onnx", ds.eval.images)
    served_class, p_raw = served_raw(probs, b.n, b.alpha)
    methods = {"monte_carlo": (mc.predicted, mc.radius)}
    for name, q in (("surrogate_raw", 0.0), ("surrogate_calibrated", shift)):
        p = apply_shift(p_raw, q)
        methods[name] = (
            np.where(p > 0.5, served_class, -1),
            np.asarray(radius_from_p_lower(p, b.sigma)),
        )
    m = len(labels)
    tables = {
        name: accuracy_table(pred, rad, labels, c.radii) for name, (pred, rad) in methods.items()
    }
    table = {name: t[0] for name, t in tables.items()}
    served_s = time_served(
        out / "surrogate.onnx", ds.eval.images[:200], b.n, b.alpha, b.sigma, shift
    )
    report = {
        "bundle": b.name,
        "sigma": b.sigma,
        "protocol": {"n0": b.n0, "n": b.n, "alpha": b.alpha},
        "images": m,
        "eval_every": cfg.data.eval_every,
        "calibration_shift": shift,
        "certified_accuracy": table,
        "certified_accuracy_stderr": {name: t[1] for name, t in tables.items()},
        "top1_agreement": float(np.mean(probs.argmax(1) == mc.counts.argmax(1))),
        "clean_accuracy_of_top_class": {
            "monte_carlo": float(np.mean(mc.counts.argmax(1) == labels)),
            "surrogate": float(np.mean(probs.argmax(1) == labels)),
        },
        "versus_monte_carlo": {
            name: compare(*methods[name], mc) for name in ("surrogate_raw", "surrogate_calibrated")
        },
        "seconds_per_image": {
            "monte_carlo": float(mc.seconds.mean()),
            "monte_carlo_std": float(mc.seconds.std()),
            "surrogate": served_s,
        },
        "speedup": float(mc.seconds.mean() / served_s),
        "max_certifiable_radius": float(radius_from_p_lower(b.alpha ** (1 / b.n), b.sigma)),
        "max_radius_at_100k": float(radius_from_p_lower(b.alpha ** (1 / 100_000), b.sigma)),
        "environment": environment(),
    }
    curves = {name: (pred, rad) for name, (pred, rad) in methods.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_plot(out / "certified_accuracy.png", curves, labels, b)
    write_markdown(out / "report.md", report)
    manifest["evaluation"] = {
        k: report[k] for k in ("images", "certified_accuracy", "top1_agreement", "speedup")
    }
    manifest["evaluation"]["overestimation_rate_calibrated"] = report["versus_monte_carlo"][
        "surrogate_calibrated"
    ]["overestimation_rate"]
    write_manifest(out, manifest)
    log.info("evaluate: %s", json.dumps(table))
    return out / "report.json"
