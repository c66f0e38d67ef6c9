"""The stage order and the runner behind `python -m exporter run`.

    data -> train-base -> export-base -> targets -> train-surrogate -> export-surrogate
    -> calibrate -> bundle -> evaluate -> hybrid (adds /certify?mode=hybrid's figures to the
    report)

Work artifacts (data.npz, base.pt, base.onnx, targets/, surrogate.pt, surrogate.onnx, calib_mc/,
calibration.json, eval_mc/, holdout_mc/) live in the work folder (default `work/<bundle name>`,
git-ignored); the bundle, evaluate and hybrid stages write into the bundle folder. Each stage
module owns its artifact: it names the files and offers `load(work)` to the stages after it,
which never spell another stage's file names. The training stages write checkpoints only; the
export stages (`exporter.onnx_export`, one per network) convert each to ONNX, parity-checked,
with a sidecar naming the checkpoint it came from, and offer `onnx_export.graph(work, kind)`.
They run right after their training stage because targets, calibrate and evaluate sample the
very graph the bundle ships (their Monte-Carlo folders are stamped with its sha256); the bundle
stage copies the graphs unchanged. Every stage resumes or recomputes from the artifacts present,
so `--stage NAME` reruns one stage alone.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from exporter import (
    bundle,
    calibrate,
    data,
    evaluate,
    executor,
    hybrid,
    onnx_export,
    targets,
    train_base,
    train_surrogate,
)
from exporter.config import Config

log = logging.getLogger(__name__)
TIMINGS = "timings.json"  # seconds per stage, as last run in this work folder


def load_timings(work: Path) -> dict:
    """{stage: seconds} as last recorded in `work` (empty when no stage ran there)."""
    path = work / TIMINGS
    return json.loads(path.read_text()) if path.exists() else {}


STAGES = {
    "data": lambda cfg, work, out: data.prepare(cfg.data, work),
    "train-base": lambda cfg, work, out: train_base.run(cfg, work),
    "export-base": lambda cfg, work, out: onnx_export.run(cfg, work, "base"),
    "targets": lambda cfg, work, out: targets.run(cfg, work),
    "train-surrogate": lambda cfg, work, out: train_surrogate.run(cfg, work),
    "export-surrogate": lambda cfg, work, out: onnx_export.run(cfg, work, "surrogate"),
    "calibrate": lambda cfg, work, out: calibrate.run(cfg, work),
    "bundle": lambda cfg, work, out: bundle.run(cfg, work, out),
    "evaluate": lambda cfg, work, out: evaluate.run(cfg, work, out),
    "hybrid": lambda cfg, work, out: hybrid.run(out, work, cfg.hybrid),
}


def run(cfg: Config, work: Path, out: Path, stages: list[str] | None = None) -> dict:
    """Run `stages` (default: all, in order); returns and records seconds per stage."""
    bundle.check_output_folder(out, cfg.bundle.name)
    work.mkdir(parents=True, exist_ok=True)
    timings_path = work / TIMINGS
    timings = load_timings(work)
    with executor.active(workers=None) as ex, executor.using(ex):  # every core, for all stages
        for name in stages or list(STAGES):
            log.info("stage %s: start", name)
            t0 = time.perf_counter()
            STAGES[name](cfg, work, out)
            timings[name] = round(time.perf_counter() - t0, 1)
            timings_path.write_text(json.dumps(timings, indent=2))
            log.info("stage %s: done in %.1f s", name, timings[name])
    return timings
