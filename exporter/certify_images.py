"""Monte-Carlo CERTIFY over a set of images, resumable: the ground truth for calibrate/evaluate.

Runs `accsmooth.sampling.certify` (the code behind /certify/sampled) on each image with the
bundle's protocol (n0, n, alpha) and a per-image seed (seed, image index), in chunks of `CHUNK`
images (`exporter.chunk_work.certify_chunk`) on the active executor (`exporter.executor`: every
local core by default, or Ray). The driver writes each finished chunk to
`<out_dir>/chunk_XXXXX.npz` (tmp + rename) with the sha256 of its images; a rerun skips
finished chunks whose images are the same, so a set that grows at its end (more calibration
images) only certifies the new ones. Each chunk records its `sampler`: "numpy" (onnxruntime
on CPU cores or Ray) or "torch" (`exporter.torch_work` on a GPU); chunks of both may sit in
one folder, since each is CERTIFY of the same graph with fresh, independent draws.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from accsmooth.bundle import sha256_of
from accsmooth.smoothing import certify_from_counts
from exporter import chunk_work, executor
from exporter.config import BundleConfig

log = logging.getLogger(__name__)
CHUNK = 10  # images per resumable chunk


@dataclass(frozen=True)
class MonteCarloSet:
    predicted: np.ndarray  # [M] certified class, -1 where CERTIFY abstained
    p_a_lower: np.ndarray  # [M]
    radius: np.ndarray  # [M], 0 where abstained
    counts0: np.ndarray  # [M,K]
    counts: np.ndarray  # [M,K]
    seconds: np.ndarray  # [M] wall time of CERTIFY per image


def images_digest(images_uint8: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images_uint8).tobytes()).hexdigest()


def finished(chunk: Path, digest: str) -> bool:
    """A chunk file exists and was certified on these very images."""
    if not chunk.exists():
        return False
    with np.load(chunk) as saved:
        return "images_sha256" in saved.files and str(saved["images_sha256"]) == digest


def saved_counts(out_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(counts0, counts) of the chunks written in `out_dir` so far, in image order; None when
    there are none."""
    chunks = sorted(out_dir.glob("chunk_?????.npz"))
    if not chunks:
        return None
    parts = [np.load(path) for path in chunks]
    counts0 = np.concatenate([p["counts0"] for p in parts])
    return counts0, np.concatenate([p["counts"] for p in parts])


def samplers(out_dir: Path) -> dict[str, int]:
    """{sampler: chunks} of the chunks in `out_dir` ("numpy" for chunks written before chunks
    said which sampler drew them)."""
    found: dict[str, int] = {}
    for chunk in sorted(out_dir.glob("chunk_?????.npz")):
        with np.load(chunk) as saved:
            name = str(saved["sampler"]) if "sampler" in saved.files else "numpy"
        found[name] = found.get(name, 0) + 1
    return found


def folder_stamp(base_onnx: Path, bundle: BundleConfig, seed: int) -> dict:
    """What a chunk folder's results depend on: the protocol, the seed and the base graph."""
    return {
        "n0": bundle.n0,
        "n": bundle.n,
        "alpha": bundle.alpha,
        "sigma": bundle.sigma,
        "seed": seed,
        "base_sha256": sha256_of(Path(base_onnx)),  # the same model, not only the same protocol
    }


def chunk_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"chunk_{index:05d}.npz"


def write_chunk(path: Path, arrays: dict, digest: str, sampler: str) -> None:
    """One finished chunk (counts0, counts, seconds of its images), written atomically."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays, images_sha256=digest, sampler=sampler)
    tmp.replace(path)


def certify_all(
    base_onnx: Path,
    images_uint8: np.ndarray,
    bundle: BundleConfig,
    *,
    batch_size: int,
    seed: int,
    out_dir: Path,
    desc: str,
) -> MonteCarloSet:
    executor.claim_folder(out_dir, folder_stamp(base_onnx, bundle, seed))
    starts = range(0, len(images_uint8), CHUNK)
    shared = dict(seed=seed, sigma=bundle.sigma, n0=bundle.n0, n=bundle.n, alpha=bundle.alpha)
    shared["batch_size"] = batch_size
    digests = [images_digest(images_uint8[start : start + CHUNK]) for start in starts]
    todo = [
        (index, {"images_uint8": images_uint8[start : start + CHUNK], "first": start} | shared)
        for index, start in enumerate(starts)
        if not finished(chunk_path(out_dir, index), digests[index])
    ]
    with executor.active() as ex:
        if todo:
            log.info("%s: %d of %d chunks on %s", desc, len(todo), len(starts), ex.describe())
        results = ex.map(chunk_work.certify_chunk, Path(base_onnx), todo)
        for index, arrays in tqdm(results, total=len(todo), desc=desc, mininterval=30):
            write_chunk(chunk_path(out_dir, index), arrays, digests[index], ex.sampler)
    parts = [np.load(chunk_path(out_dir, i)) for i in range(len(starts))]
    counts0 = np.concatenate([p["counts0"] for p in parts])
    counts = np.concatenate([p["counts"] for p in parts])
    certs = [
        certify_from_counts(c0, c, bundle.alpha, bundle.sigma)
        for c0, c in zip(counts0, counts, strict=True)
    ]
    return MonteCarloSet(
        predicted=np.array([-1 if c.abstained else c.predicted_class for c in certs]),
        p_a_lower=np.array([c.p_a_lower for c in certs]),
        radius=np.array([c.radius for c in certs]),
        counts0=counts0,
        counts=counts,
        seconds=np.concatenate([p["seconds"] for p in parts]),
    )
