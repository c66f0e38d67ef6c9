"""Stage 10, hybrid: how /certify?mode=hybrid does on the bundle's evaluation images.

    python -m exporter.hybrid models/cifar10-sigma0.25 --work work/cifar10-sigma0.25 \
        --config exporter/configs/cifar10-cpu.toml          # [hybrid] of the preset, else defaults
    python -m exporter run --config ... --out models/x --stage hybrid      # the same, as a stage

Settings: the preset's `[hybrid]` section (`exporter.config.HybridConfig`: margin, budget_ms,
batch_size, radii, seed; its defaults are the server's); `--margin` and `--budget-ms` override.
Runs after `evaluate` and reads, never writes, the work folder (the evaluation images through
`data.load`; the full-protocol Monte-Carlo results through `evaluate.monte_carlo_counts`, when
complete). For every image it applies the server's routing rule
(`accsmooth.smoothing.hybrid_route`, the margin) to the surrogate's calibrated output; images on
the boundary get a real CERTIFY on the base model with the (n0, n) the server would pick for the
budget (`accsmooth.sampling.fallback_samples`, from the base-model throughput measured here on
one onnxruntime thread, like the server's audit session). It reports how often each method
answers, the hybrid's certified accuracy at the report's radii (next to the surrogate's and
Monte-Carlo's), its over-estimations against the full-protocol Monte-Carlo certificate, and
per-image latency (in process, batch 1). Then it adds a `hybrid` section to report.json,
report.md and the manifest's evaluation summary and rehashes the manifest; nothing else of the
report is recomputed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from accsmooth.bundle import read_manifest
from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from accsmooth.sampling import certify, certify_given_class, fallback_samples, measure_throughput
from accsmooth.smoothing import certify_from_probabilities, hybrid_route, overestimated
from exporter import bundle as bundle_stage
from exporter import data as data_stage
from exporter.config import HybridConfig, load_config
from exporter.evaluate import monte_carlo_counts
from exporter.fidelity import monte_carlo_certificates
from exporter.report import load_report, render, save_report
from exporter.scoring import accuracy_table

log = logging.getLogger(__name__)
# how the fallback CERTIFY picks cA: its own n0 selection draws (what the server runs), or the
# surrogate's class with all n0 + n samples bounding pA; the report compares the two
GUESSES = ("selection_round", "surrogate_class")


def full_protocol_mc(work: Path, m: int, alpha: float, sigma: float):
    """(class or -1, radius) per evaluation image from the evaluate stage's Monte-Carlo
    results, or None when they are incomplete."""
    saved = monte_carlo_counts(work, "evaluation")
    if saved is None or len(saved[1]) != m:
        return None
    counts0, counts = saved
    pred, _, radius = monte_carlo_certificates(counts0, counts, alpha, sigma)
    return pred, radius


def percentiles(ms: np.ndarray) -> dict:
    if len(ms) == 0:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "max": float(ms.max()),
    }


def evaluate(bundle: Path, work: Path, cfg: HybridConfig = HybridConfig()) -> dict:
    """The hybrid section of the report (see the module docstring)."""
    margin, budget_ms, batch = cfg.margin, cfg.budget_ms, cfg.batch_size
    manifest = read_manifest(bundle)
    sigma, proto = manifest.sigma, manifest.protocol
    n, alpha = proto.n, proto.alpha
    shift = manifest.shift  # one shift or a shift per bin
    ds = data_stage.load(work)
    x, labels = data_stage.to_float(ds.eval.images), ds.eval.labels
    one_thread = RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
    surrogate = OnnxPredictor(make_session(bundle / manifest.graphs.surrogate.file))
    base = OnnxPredictor(make_session(bundle / manifest.graphs.base.file, one_thread))
    k = manifest.num_classes
    rate = measure_throughput(base, x.shape[1:], sigma=sigma, num_classes=k, batch_size=batch)
    n0_fb, n_fb = fallback_samples(budget_ms, rate, proto.n0, n)
    mc = full_protocol_mc(work, len(x), alpha, sigma)
    surrogate(x[:1])  # warm
    runs = {}
    for guess in GUESSES:
        pred = np.full(len(x), -1)
        radius = np.zeros(len(x))
        routes, ms = [], np.zeros(len(x))
        for i in range(len(x)):
            t0 = time.perf_counter()
            probs = surrogate(x[i : i + 1])
            served = certify_from_probabilities(probs, n, alpha, sigma, shift)[0]
            route = hybrid_route(float(probs.max()), served.p_a_lower, margin)
            if route == "boundary":
                rng = np.random.default_rng([cfg.seed, i])
                common = dict(sigma=sigma, num_classes=k, alpha=alpha, rng=rng)
                if guess == "surrogate_class":  # no selection round: all samples bound pA
                    served = certify_given_class(
                        base,
                        x[i],
                        int(probs.argmax()),
                        n=n0_fb + n_fb,
                        batch_size=min(batch, n0_fb + n_fb),
                        **common,
                    ).certificate
                else:
                    served = certify(
                        base, x[i], n0=n0_fb, n=n_fb, batch_size=min(batch, n_fb), **common
                    ).certificate
            ms[i] = 1000.0 * (time.perf_counter() - t0)
            routes.append(route)
            if not served.abstained:
                pred[i], radius[i] = served.predicted_class, served.radius
        runs[guess] = (pred, radius, np.array(routes), ms)
    pred, radius, routes, ms = runs["selection_round"]
    mc_answered = routes == "boundary"
    accuracy, stderr = accuracy_table(pred, radius, labels, cfg.radii)
    section = {
        "margin": margin,
        "budget_ms": budget_ms,
        "base_samples_per_second": rate,
        "fallback_protocol": {"n0": n0_fb, "n": n_fb, "alpha": alpha},
        "images": int(len(x)),
        "answered_by": {
            "surrogate": float(np.mean(~mc_answered)),
            "surrogate_clear_certify": float(np.mean(routes == "clear_certify")),
            "surrogate_clear_abstain": float(np.mean(routes == "clear_abstain")),
            "monte_carlo": float(np.mean(mc_answered)),
        },
        "certified_accuracy": accuracy,
        "certified_accuracy_stderr": stderr,
        "latency_ms": {
            "all": percentiles(ms),
            "surrogate": percentiles(ms[~mc_answered]),
            "monte_carlo": percentiles(ms[mc_answered]),
        },
        "seed": cfg.seed,
    }
    if mc is not None:
        over = overestimated(pred, radius, mc[0], mc[1])
        section["overestimation_rate_vs_monte_carlo"] = float(over.mean())
    # the same routing, with the fallback CERTIFY taking the surrogate's class as cA and
    # spending n0 + n samples on the bound (no selection round)
    pred, radius, _, ms = runs["surrogate_class"]
    section["surrogate_class_fallback"] = {
        "n": n0_fb + n_fb,
        "certified_accuracy": accuracy_table(pred, radius, labels, cfg.radii)[0],
        "latency_ms": {"monte_carlo": percentiles(ms[mc_answered])},
    }
    if mc is not None:
        over = overestimated(pred, radius, mc[0], mc[1])
        section["surrogate_class_fallback"]["overestimation_rate_vs_monte_carlo"] = float(
            over.mean()
        )
    return section


def run(bundle: Path, work: Path, cfg: HybridConfig = HybridConfig()) -> Path:
    """Evaluate the hybrid mode and add it to report.json, report.md and the manifest."""
    section = evaluate(bundle, work, cfg)
    report = load_report(bundle)
    report["hybrid"] = section
    report_path = save_report(bundle, report)
    render(bundle)
    summary = {
        "answered_by_surrogate": section["answered_by"]["surrogate"],
        "certified_accuracy": section["certified_accuracy"],
        "budget_ms": cfg.budget_ms,
    }
    bundle_stage.update_evaluation(bundle, {"hybrid": summary}, merge=True)
    log.info("hybrid: %s", json.dumps(section["answered_by"]))
    return report_path


def parse_args(argv: list[str] | None = None) -> tuple[Path, Path, HybridConfig]:
    """(bundle, work, settings): the preset's [hybrid] section, or defaults, then the flags."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.hybrid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path, help="bundle folder with report.json")
    parser.add_argument("--work", type=Path, required=True, help="the bundle's work folder")
    parser.add_argument("--config", help="TOML preset whose [hybrid] section to use")
    parser.add_argument("--margin", type=float, help="overrides hybrid.margin (probability)")
    parser.add_argument("--budget-ms", type=float, help="overrides hybrid.budget_ms")
    args = parser.parse_args(argv)
    cfg = load_config(args.config).hybrid
    flags = {"margin": args.margin, "budget_ms": args.budget_ms}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    return args.bundle, args.work, cfg


def main(argv: list[str] | None = None) -> None:
    bundle, work, cfg = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(bundle, work, cfg)


if __name__ == "__main__":
    main()
