"""Stage 3, targets: Monte-Carlo class counts of the base model for every training image.

For each training image x, N noisy copies x + N(0, sigma^2 I) go through base.onnx in
onnxruntime and the argmax labels are counted: counts[i] sums to N, and counts / N is the
surrogate's training target (Accelerated Smoothing). Noise is streamed batch by batch.
Images are labelled in chunks, each written to `<work>/targets/chunk_XXXXX.npy` with its own
seed (seed, chunk index), so an interrupted run resumes at the first missing chunk and gives the
same counts as an uninterrupted one.

Adaptive N (`extra_samples`): an image whose top class took at least `confident_fraction` of its
N draws gets `extra_samples` more. Radii live at the top of the range (p_A = 0.97 certifies 0.47
sigma less than 0.999), which N = 256 draws cannot resolve; the extra draws go only where the
base is confident, so they cost a fraction of drawing them for every image.
Artifact: `<work>/targets/counts.npy` [N_train, K] (rows sum to N or N + extra_samples) and
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
from exporter.bundle import sha256
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
    base = ensure_onnx(work, "base", cfg.export, ds.calib.images)
    predict = OnnxPredictor(make_session(base))
    out_dir = work / "targets"
    out_dir.mkdir(exist_ok=True)
    stamp = {  # chunks of another protocol or base model are never mixed in
        "sigma": sigma,
        "num_samples": c.num_samples,
        "extra_samples": c.extra_samples,
        "confident_fraction": c.confident_fraction,
        "chunk_images": c.chunk_images,
        "seed": c.seed,
        "base_sha256": sha256(base),
    }
    stamp_path = out_dir / "protocol.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) != stamp:
        raise ValueError(
            f"{out_dir}: holds counts of another protocol or base model {stamp_path.read_text()};"
            " delete the folder to recompute"
        )
    stamp_path.write_text(json.dumps(stamp))
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
        drawn = len(x) * c.num_samples
        if c.extra_samples:
            confident = counts.max(1) >= c.confident_fraction * c.num_samples
            if confident.any():
                counts[confident] += sample_counts(
                    predict, x[confident], c.extra_samples, sigma, k, c.batch_size, rng
                )
            drawn += int(confident.sum()) * c.extra_samples
        np.save(path.with_suffix(".tmp.npy"), counts)
        path.with_suffix(".tmp.npy").replace(path)
        busy += time.perf_counter() - t0
        labelled += drawn
    counts = np.concatenate([np.load(out_dir / f"chunk_{i:05d}.npy") for i in range(len(chunks))])
    sums = counts.sum(1)
    assert np.isin(sums, [c.num_samples, c.num_samples + c.extra_samples]).all(), (
        "every count vector must sum to N or N + extra_samples"
    )
    np.save(out_dir / "counts.npy", counts)
    meta = {
        "num_samples": c.num_samples,
        "extra_samples": c.extra_samples,
        "confident_fraction": c.confident_fraction,
        "images_with_extra_samples": int((sums > c.num_samples).sum()),
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
