"""Stage 3, targets: Monte-Carlo class counts of the base model for every training image.

For each training image x, N noisy copies x + N(0, sigma^2 I) go through base.onnx in
onnxruntime and the argmax labels are counted: counts[i] sums to N, and counts / N is the
surrogate's training target (Accelerated Smoothing). Noise is streamed batch by batch.
Images are labelled in chunks, each written to `<work>/targets/chunk_XXXXX.npy` with its own
seed (seed, chunk index), so an interrupted run resumes at the first missing chunk and gives the
same counts as an uninterrupted one. Artifact: `<work>/targets/counts.npy` [N_train, K] and
`<work>/targets/meta.json` (N, seed, samples/s against the bare onnxruntime rate).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from exporter import data as data_stage
from exporter.config import Config
from exporter.onnx_export import ensure_onnx
from server.runtime import OnnxPredictor, make_session
from server.sampling import sample_counts

log = logging.getLogger(__name__)


def bare_rate(predict, shape, batch_size: int, seconds: float = 3.0) -> float:
    """Images/s of onnxruntime alone on one fixed batch: the physical limit for labelling."""
    batch = np.random.default_rng(0).random((batch_size, *shape), dtype=np.float32)
    predict(batch)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predict(batch)
        done += batch_size
    return done / (time.perf_counter() - t0)


def run(cfg: Config, work: Path) -> Path:
    c, sigma = cfg.targets, cfg.bundle.sigma
    ds = data_stage.load(work)
    predict = OnnxPredictor(make_session(ensure_onnx(work, "base", cfg.export, ds.calib.images)))
    out_dir = work / "targets"
    out_dir.mkdir(exist_ok=True)
    images, k = ds.train.images, len(ds.classes)
    chunks = range(0, len(images), c.chunk_images)
    rate = bare_rate(predict, images.shape[1:], c.batch_size)
    labelled, busy = 0, 0.0
    for index, start in enumerate(tqdm(chunks, desc="targets", mininterval=10)):
        path = out_dir / f"chunk_{index:05d}.npy"
        if path.exists():
            continue
        t0 = time.perf_counter()
        x = data_stage.to_float(images[start : start + c.chunk_images])
        rng = np.random.default_rng([c.seed, index])
        counts = sample_counts(predict, x, c.num_samples, sigma, k, c.batch_size, rng)
        np.save(path.with_suffix(".tmp.npy"), counts)
        path.with_suffix(".tmp.npy").replace(path)
        busy += time.perf_counter() - t0
        labelled += len(x) * c.num_samples
    counts = np.concatenate([np.load(out_dir / f"chunk_{i:05d}.npy") for i in range(len(chunks))])
    assert (counts.sum(1) == c.num_samples).all(), "every count vector must sum to N"
    np.save(out_dir / "counts.npy", counts)
    meta = {
        "num_samples": c.num_samples,
        "seed": c.seed,
        "images": len(counts),
        "bare_onnxruntime_images_per_s": rate,
    }
    if labelled:
        meta |= {"samples_per_s": labelled / busy, "fraction_of_bare": labelled / busy / rate}
        log.info(
            "targets: %.0f samples/s = %.0f%% of bare onnxruntime (%.0f/s at batch %d)",
            labelled / busy,
            100 * labelled / busy / rate,
            rate,
            c.batch_size,
        )
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    agree = (counts.argmax(1) == ds.train.labels).mean()
    log.info(
        "targets: %d images x N=%d; top class = label on %.1f%%",
        len(counts),
        c.num_samples,
        100 * agree,
    )
    return out_dir / "counts.npy"
