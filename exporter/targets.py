"""Stage 4, targets: Monte-Carlo class counts of the base model for every training image.

For each training image x, N noisy copies x + N(0, sigma^2 I) go through base.onnx in
onnxruntime and the argmax labels are counted: counts[i] sums to N, and counts / N is the
surrogate's training target (Accelerated Smoothing). Noise is streamed batch by batch.
Images are labelled in chunks (`exporter.chunk_work.label_chunk`), each with its own seed
(seed, chunk index), on the active executor (`exporter.executor`: every local core by default,
or Ray); the driver writes each finished chunk to `<work>/targets/chunk_XXXXX.npy` (tmp +
rename), so an interrupted run resumes from its finished chunks and gives the same counts as an
uninterrupted one, whichever executor ran which chunk.

Adaptive N (`extra_samples`): an image whose top class took at least `confident_fraction` of its
N draws gets `extra_samples` more. Radii live at the top of the range (p_A = 0.97 certifies 0.47
sigma less than 0.999), which N = 256 draws cannot resolve; the extra draws go only where the
base is confident, so they cost a fraction of drawing them for every image.
Mirror images (`flipped`): each training image's horizontal mirror is labelled too, with its
own draws, so the surrogate can train on flipped images without borrowing counts that belong to
another image (a mirrored image's frequencies are close to, not equal to, the original's).
Reads the base graph through `onnx_export.graph` (the base.onnx the export-base stage wrote).
Artifact: `<work>/targets/counts.npy` [N_train, K] (rows sum to N or N + extra_samples; with
`flipped`, [2 N_train, K]: the originals, then their mirrors), read through `load(work)` and
`labelled_images(work, train_images)` (the images its rows belong to), and
`<work>/targets/meta.json` (N, seed, the executor, samples/s of all
its workers together against the bare onnxruntime rate of one session on every core).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from accsmooth.bundle import sha256_of
from accsmooth.runtime import OnnxPredictor, make_session
from exporter import chunk_work, executor, onnx_export
from exporter import data as data_stage
from exporter.config import Config

log = logging.getLogger(__name__)
FOLDER, COUNTS, META = "targets", "counts.npy", "meta.json"


def load(work: Path) -> np.ndarray:
    """The counts [N_train, K] of the targets stage (int)."""
    path = work / FOLDER / COUNTS
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the targets stage first")
    return np.load(path)


def load_meta(work: Path) -> dict:
    """meta.json of the targets stage (N, seed, flipped, images, rates)."""
    return json.loads((work / FOLDER / META).read_text())


def labelled_images(work: Path, train_images: np.ndarray) -> np.ndarray:
    """The images the rows of `load(work)` belong to: the first training images, then their
    mirrors when the targets stage labelled those too."""
    meta = load_meta(work)
    images = train_images[: meta["images"] // (2 if meta.get("flipped") else 1)]
    return mirrored(images) if meta.get("flipped") else images


def mirrored(images: np.ndarray) -> np.ndarray:
    """The images followed by their horizontal mirrors (uint8 [M,3,H,W] -> [2M,3,H,W])."""
    return np.concatenate([images, images[..., ::-1]])


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
    base = onnx_export.graph(work, "base")
    predict = OnnxPredictor(make_session(base))
    out_dir = work / FOLDER
    out_dir.mkdir(exist_ok=True)
    stamp = {  # chunks of another protocol or base model are never mixed in
        "sigma": sigma,
        "num_samples": c.num_samples,
        "extra_samples": c.extra_samples,
        "confident_fraction": c.confident_fraction,
        "chunk_images": c.chunk_images,
        "seed": c.seed,
        "base_sha256": sha256_of(base),
    }
    if c.flipped:  # only when set: folders labelled before mirrors existed keep their stamp
        stamp["flipped"] = True
    executor.claim_folder(out_dir, stamp)
    images, k = ds.train.images[: c.max_images or None], len(ds.classes)
    labels = ds.train.labels[: len(images)]
    if c.flipped:
        images, labels = mirrored(images), np.concatenate([labels, labels])
    chunks = range(0, len(images), c.chunk_images)
    rate = bare_rate(predict, images.shape[1:], c.batch_size)
    shared = {  # the same for every chunk
        "seed": c.seed,
        "sigma": sigma,
        "num_classes": k,
        "num_samples": c.num_samples,
        "extra_samples": c.extra_samples,
        "confident_fraction": c.confident_fraction,
        "batch_size": c.batch_size,
    }
    todo = [
        (index, {"images_uint8": images[start : start + c.chunk_images], "index": index} | shared)
        for index, start in enumerate(chunks)
        if not (out_dir / f"chunk_{index:05d}.npy").exists()
    ]
    labelled, t0 = 0, time.perf_counter()
    with executor.active() as ex:
        where = ex.describe()
        log.info("targets: %d of %d chunks to label on %s", len(todo), len(chunks), where)
        results = ex.map(chunk_work.label_chunk, base, todo)
        progress = tqdm(results, total=len(todo), desc="targets", mininterval=10)
        for index, (counts, drawn) in progress:
            path = out_dir / f"chunk_{index:05d}.npy"
            np.save(path.with_suffix(".tmp.npy"), counts)
            path.with_suffix(".tmp.npy").replace(path)
            labelled += drawn
    wall = time.perf_counter() - t0
    counts = np.concatenate([np.load(out_dir / f"chunk_{i:05d}.npy") for i in range(len(chunks))])
    sums = counts.sum(1)
    assert np.isin(sums, [c.num_samples, c.num_samples + c.extra_samples]).all(), (
        "every count vector must sum to N or N + extra_samples"
    )
    np.save(out_dir / COUNTS, counts)
    meta = {
        "num_samples": c.num_samples,
        "extra_samples": c.extra_samples,
        "confident_fraction": c.confident_fraction,
        "images_with_extra_samples": int((sums > c.num_samples).sum()),
        "seed": c.seed,
        "flipped": c.flipped,
        "images": len(counts),
        "bare_onnxruntime_images_per_s": rate,
        "executor": where,
    }
    if labelled:
        meta |= {"samples_per_s": labelled / wall, "fraction_of_bare": labelled / wall / rate}
        log.info(
            "targets: %.0f samples/s = %.0f%% of bare onnxruntime (%.0f/s at batch %d)",
            labelled / wall,
            100 * labelled / wall / rate,
            rate,
            c.batch_size,
        )
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    agree = (counts.argmax(1) == labels).mean()
    log.info(
        "targets: %d images x N=%d; top class = label on %.1f%%",
        len(counts),
        c.num_samples,
        100 * agree,
    )
    return out_dir / COUNTS
