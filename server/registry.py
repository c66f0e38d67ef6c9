"""The model registry: loads every bundle of the models folder, warms it up, owns its sessions.

Each bundle gets two onnxruntime sessions: the surrogate (fast path, behind a micro-batcher,
all the threads it wants) and the base classifier (audits, `ACCSMOOTH_SAMPLED_THREADS`
threads, so Monte-Carlo work cannot starve /certify). Loading runs in a thread after the app
has started, so `/livez` answers and `/readyz` says 503 "loading" meanwhile. A bundle that
fails any check is kept as `failed` with the message (logged with its path; shown by /readyz and
/models with the bundle's name in place of its folder's path on disk): the server stays up and
serves the good bundles but is not ready.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from accsmooth.bundle import (
    BundleError,
    Manifest,
    check_graph,
    evaluation_outputs,
    read_manifest,
    verify_files,
)
from accsmooth.runtime import OnnxPredictor, make_session
from accsmooth.sampling import measure_throughput
from accsmooth.smoothing import certify_batch
from server import metrics
from server.fast.batcher import MicroBatcher
from server.http.errors import ModelNotFound, ModelNotReady, RadiusOutOfReach
from server.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]


@dataclass
class LoadedModel:
    """One bundle: its manifest and, once ready, its sessions and micro-batcher."""

    name: str
    folder: Path
    status: Status = "loading"
    error: str | None = None
    manifest: Manifest | None = None
    surrogate: OnnxPredictor | None = None
    base: OnnxPredictor | None = None
    batcher: MicroBatcher | None = field(default=None, repr=False)
    base_samples_per_second: float = 0.0  # measured at warm-up; sizes hybrid fallbacks
    # served certificates on the bundle's evaluation images (evidence.npz): the radii of the
    # correct ones, sorted, and the number of images; what ?radius=R ranks bundles by
    correct_radii: np.ndarray | None = field(default=None, repr=False)
    evaluation_images: int = 0
    max_batch: int = 1  # images per surrogate call (`micro_batch`)

    def served_accuracy(self, radius: float) -> float:
        """Served (calibrated) certified accuracy at `radius` on the bundle's evaluation images:
        exact from its evidence; without evidence, the manifest's table at the nearest
        tabulated radius >= `radius` (a lower bound: accuracy falls with the radius); 0 when
        neither says."""
        if self.correct_radii is not None:
            reached = len(self.correct_radii) - np.searchsorted(self.correct_radii, radius)
            return float(reached / self.evaluation_images)
        table = ((self.manifest.evaluation or {}).get("certified_accuracy") or {}).get(
            "surrogate_calibrated", {}
        )
        above = [(float(r), float(a)) for r, a in table.items() if float(r) >= radius]
        return min(above)[1] if above else 0.0

    def certify_batch(self, images: np.ndarray, shifts: list[float]) -> list[tuple]:
        """Surrogate certificates for a batch: (p_a, Certificate) per image, per its shift."""
        m = self.manifest
        probs = self.surrogate(images)
        return certify_batch(probs, m.protocol.n, m.protocol.alpha, m.sigma, shifts)


def _load(folder: Path, settings: Settings) -> LoadedModel:
    """Read, verify, open and warm up one bundle (blocking; runs in a worker thread)."""
    manifest = read_manifest(folder)
    if manifest.name != folder.name:
        raise BundleError(
            f"{folder / 'manifest.json'}: name {manifest.name!r} differs from its folder"
            f" {folder.name!r}; a bundle lives in models/<name>/"
        )
    verify_files(folder, manifest)
    model = LoadedModel(manifest.name, folder, manifest=manifest)
    outputs = evaluation_outputs(folder)
    if outputs is not None:
        labels, probs = outputs
        if probs.shape[1] != manifest.num_classes:
            raise BundleError(
                f"{folder / 'evidence.npz'}: evaluation probabilities for {probs.shape[1]} "
                f"classes, the manifest has {manifest.num_classes}"
            )
        p = manifest.protocol
        certs = certify_batch(probs, p.n, p.alpha, manifest.sigma, [manifest.shift] * len(probs))
        model.correct_radii = np.sort(
            [c.radius for (_, c), y in zip(certs, labels, strict=True) if c.predicted_class == y]
        )
        model.evaluation_images = len(labels)
    graphs = {"surrogate": settings.fast_runtime(), "base": settings.sampled_runtime()}
    for kind, options in graphs.items():
        spec = getattr(manifest.graphs, kind)
        try:
            session = make_session(folder / spec.file, options)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{folder / spec.file}: onnxruntime cannot load it: {exc}") from exc
        check_graph(session, manifest, kind)
        setattr(model, kind, OnnxPredictor(session))
    model.max_batch = micro_batch(manifest, settings)
    _warm_up(model, model.max_batch)
    model.base_samples_per_second = measure_throughput(
        model.base,
        manifest.input.shape,
        sigma=manifest.sigma,
        num_classes=manifest.num_classes,
        batch_size=settings.sampled_batch_size,
    )
    return model


def micro_batch(manifest: Manifest, settings: Settings) -> int:
    """Images per surrogate call for this bundle: `max_batch`, fewer where a probe graph's
    images would pass `max_passes_per_call` network passes (one image at the least)."""
    return min(settings.max_batch, manifest.images_within(settings.max_passes_per_call))


def _warm_up(model: LoadedModel, max_batch: int) -> None:
    """Run both graphs once (allocations, kernel choice) and check what they output."""
    m = model.manifest
    for kind, sizes in (("surrogate", {1, max_batch}), ("base", {1})):
        file = getattr(m.graphs, kind).file
        for size in sorted(sizes):
            x = np.full((size, *m.input.shape), 0.5, dtype=np.float32)
            try:
                y = np.asarray(getattr(model, kind)(x))
            except Exception as exc:
                where = model.folder / file
                raise BundleError(f"{where}: fails on a batch of {size}: {exc}") from exc
            if y.shape != (size, m.num_classes) or not np.isfinite(y).all():
                raise BundleError(
                    f"{model.folder / file}: batch of {size} gave shape {list(y.shape)} "
                    f"(finite: {bool(np.isfinite(y).all())}), expected [{size}, {m.num_classes}]"
                )
            if kind == "surrogate" and not np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
                raise BundleError(
                    f"{model.folder / file}: outputs do not sum to 1 (got {y.sum(axis=1)[0]:.4f});"
                    " the surrogate must output probabilities, not logits"
                )


class ModelRegistry:
    """Every bundle of `settings.models_dir`, by name, with its loading status."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models: dict[str, LoadedModel] = {}
        self.problems: list[str] = []  # folder-level problems (no bundles, bad default, ...)
        self.loaded = False
        self.default_name: str | None = settings.default_model

    async def load(self) -> None:
        """Load every bundle (in a thread), then start the micro-batchers on this event loop."""
        folders = _bundle_folders(self.settings.models_dir)
        if not folders:
            log.error("%s: no model bundles found", self.settings.models_dir)
            self.problems.append("the models folder (ACCSMOOTH_MODELS_DIR): no model bundles found")
        for folder in folders:
            self.models.setdefault(folder.name, LoadedModel(folder.name, folder))
        for folder in folders:
            await self._load_one(folder)
        if self.default_name is None and self.models:
            self.default_name = sorted(self.models)[0]
        elif self.default_name is not None and self.default_name not in self.models:
            self.problems.append(
                f"ACCSMOOTH_DEFAULT_MODEL={self.default_name!r} names no bundle in the models"
                f" folder (have: {', '.join(sorted(self.models)) or 'none'})"
            )
        for problem in self.problems:
            log.error("not ready: %s", problem)
        # Everything allocated so far (libraries, sessions, schemas) lives as long as the
        # process: keep it out of the garbage collector's full passes, which otherwise walk it
        # every few thousand requests and stall the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.loaded = True

    async def _load_one(self, folder: Path) -> None:
        placeholder = self.models.pop(folder.name)
        try:
            model = await asyncio.to_thread(_load, folder, self.settings)
        except BundleError as exc:
            placeholder.status, placeholder.error = "failed", without_paths(exc.detail, folder)
            self.models[placeholder.name] = placeholder
            metrics.MODEL_READY.labels(placeholder.name).set(0)
            log.error("bundle %s failed to load: %s", folder, exc.detail)  # the log has the path
            return
        s = self.settings
        model.batcher = MicroBatcher(
            model.certify_batch,
            max_batch=model.max_batch,
            max_delay=s.max_queue_delay_ms / 1000.0,
            max_queue=s.max_queue,
            name=model.name,
            inline_max=s.inline_max_ms / 1000.0,
        )
        await model.batcher.start()
        # one image through the whole path (batcher thread, bound, radius): no cold first request
        shape = model.manifest.input.shape
        await model.batcher.submit(np.full(shape, 0.5, np.float32), model.manifest.shift, "warm-up")
        model.status = "ready"
        self.models[model.name] = model
        for kind in ("surrogate", "base"):
            provider = getattr(model, kind).provider
            version = model.manifest.version
            metrics.MODEL_INFO.labels(model.name, version, kind, provider).set(1)
        metrics.MODEL_READY.labels(model.name).set(1)
        log.info(
            "bundle %s %s ready: surrogate on %s, base on %s",
            model.name,
            model.manifest.version,
            model.surrogate.provider,
            model.base.provider,
        )

    async def close(self) -> None:
        for model in self.models.values():
            if model.batcher:
                await model.batcher.stop()

    def get(self, name: str | None) -> LoadedModel:
        """The named (or default) bundle, ready to serve; ModelNotFound / ModelNotReady if not."""
        name = name or self.default_name
        if name is None:
            raise ModelNotReady("no model is loaded yet" if not self.loaded else self.reason())
        model = self.models.get(name)
        if model is None:
            if not self.loaded:
                raise ModelNotReady(f"model {name!r} is not loaded yet")
            raise ModelNotFound(
                f"no model named {name!r}; available: {', '.join(sorted(self.models)) or 'none'}"
            )
        if model.status != "ready":
            raise ModelNotReady(f"model {name!r} is {model.status}: {model.error or 'loading'}")
        return model

    def for_radius(self, radius: float) -> LoadedModel:
        """The ready bundle whose served certificates reach `radius` on the largest fraction of
        its evaluation images (`LoadedModel.served_accuracy`; ties: the default bundle, then
        the first by name); RadiusOutOfReach when none reaches it on any image."""
        ready = [m for _, m in sorted(self.models.items()) if m.status == "ready"]
        if not ready:
            self.get(None)  # raises what a request without ?radius= would get
        scored = [(m.served_accuracy(radius), m.name == self.default_name, m) for m in ready]
        accuracy, _, best = max(scored, key=lambda row: row[:2])  # first by name among ties
        if accuracy <= 0.0:
            reach = ", ".join(f"{m.name} (sigma {m.manifest.sigma:g}): {_reach(m)}" for m in ready)
            raise RadiusOutOfReach(
                f"no bundle certifies radius {radius:g} on any of its evaluation images; "
                f"largest served radius per bundle: {reach}"
            )
        return best

    def ready(self) -> bool:
        return (
            self.loaded
            and not self.problems
            and all(m.status == "ready" for m in self.models.values())
        )

    def reason(self) -> str:
        """Why the service is not ready, naming files and problems ('' when ready)."""
        if not self.loaded:
            return "model bundles are still loading"
        failures = [f"{m.name}: {m.error}" for m in self.models.values() if m.status == "failed"]
        return "; ".join(self.problems + failures)

    def statuses(self) -> dict[str, str]:
        return {name: m.status for name, m in sorted(self.models.items())}


def _reach(model: LoadedModel) -> str:
    """The largest radius a bundle's served certificates reached on its evaluation images."""
    if model.correct_radii is None:
        return "no evaluation evidence"
    return f"{model.correct_radii[-1]:.3f}" if len(model.correct_radii) else "none"


def without_paths(detail: str, folder: Path) -> str:
    """`detail` with the bundle's folder written as the bundle's name (`tiny/base.onnx`), so
    that what clients read (/readyz, /models, 503 details) shows no path of the server's disk."""
    paths = {str(folder), str(folder.absolute()), str(folder.resolve())}
    for path in sorted(paths, key=len, reverse=True):
        detail = detail.replace(path, folder.name)
    return detail


def _bundle_folders(models_dir: Path) -> list[Path]:
    """Every visible sub-folder of the models folder is a bundle (no manifest is an error)."""
    if not models_dir.is_dir():
        return []
    hidden = (".", "_")
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(hidden))
