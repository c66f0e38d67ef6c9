"""The request pipeline, named: bytes -> decoded image -> surrogate or Monte-Carlo -> answer.

    certify_surrogate:  decode (Pillow) -> micro-batcher (surrogate, one ORT call per batch)
                        -> certify_from_probabilities with the bundle's (n, alpha, sigma, shift)
    certify_sampled:    decode -> audit pool (CERTIFY on the base model, streamed noise)
                        + the surrogate answer for the same image -> agreement

Routes only parse the HTTP request and call these; metrics are recorded here.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accsmooth.smoothing import Certificate, overestimated
from server import metrics
from server.audit import AuditJob, AuditPool, monte_carlo
from server.decoder import Decoder
from server.errors import AccsmoothError, ClientDisconnected
from server.imaging import DecodedImage
from server.registry import LoadedModel
from server.schemas import Agreement, SampledCertificate, SurrogateCertificate

if TYPE_CHECKING:
    from server.shadow import ShadowAuditor


@dataclass(frozen=True)
class SampledParams:
    """Query parameters of one audit, already range-checked."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    seed: int | None


async def decode(model: LoadedModel, decoder: Decoder, data: bytes, *, resize: bool):
    spec = model.manifest.input
    return await decoder.decode(data, height=spec.height, width=spec.width, resize=resize)


def _radius_space(model: LoadedModel, image: DecodedImage) -> str:
    c, h, w = model.manifest.input.shape
    space = f"L2 in [0,1] pixels of the {c}x{h}x{w} model input"
    if image.resized:
        ow, oh = image.original_size
        space += f", after resizing your {ow}x{oh} image: not the uploaded pixels"
    return space


def record_certificate(
    endpoint: str, model: str, method: str, cert: Certificate, seconds: float
) -> None:
    metrics.REQUEST_SECONDS.labels(endpoint, model).observe(seconds)
    metrics.CERTIFICATES.labels(endpoint, model, method).inc()
    if cert.abstained:
        metrics.ABSTENTIONS.labels(endpoint, model, method).inc()
    else:
        metrics.RADIUS.labels(endpoint, model, method).observe(cert.radius)


async def certify_surrogate(
    model: LoadedModel,
    data: bytes,
    *,
    calibrated: bool,
    resize: bool,
    decoder: Decoder,
    endpoint: str = "/certify",
    started: float | None = None,
    shadow: ShadowAuditor | None = None,
) -> SurrogateCertificate:
    """One image's surrogate certificate (the fast path); `shadow` may pick it for an audit."""
    fields = await surrogate_answer(
        model, data, calibrated=calibrated, resize=resize, decoder=decoder, endpoint=endpoint,
        started=started, shadow=shadow,
    )  # fmt: skip
    return SurrogateCertificate(**fields)


async def surrogate_answer(
    model: LoadedModel,
    data: bytes,
    *,
    calibrated: bool,
    resize: bool,
    decoder: Decoder,
    endpoint: str = "/certify",
    started: float | None = None,
    shadow: ShadowAuditor | None = None,
) -> dict:
    """`certify_surrogate` as a plain dict of the SurrogateCertificate fields (no pydantic):
    what `server.fastpath` serializes straight to JSON."""
    started = started or time.perf_counter()
    image = await decode(model, decoder, data, resize=resize)
    fields = await surrogate_fields(
        model, image, calibrated=calibrated, endpoint=endpoint, started=started
    )
    if shadow is not None and shadow.rate > 0:  # never blocks; see server.shadow
        shadow.offer(model, image.array, data, SurrogateCertificate.model_construct(**fields))
    return fields


async def certify_many(
    model: LoadedModel, images: list[bytes], *, calibrated: bool, resize: bool, decoder: Decoder
) -> list[SurrogateCertificate]:
    """/certify/batch: every image through the micro-batcher at once; errors name the image."""
    started = time.perf_counter()

    async def one(index: int, data: bytes) -> SurrogateCertificate:
        try:
            return await certify_surrogate(
                model, data, calibrated=calibrated, resize=resize, decoder=decoder,
                endpoint="/certify/batch", started=started,
            )  # fmt: skip
        except AccsmoothError as exc:
            exc.detail = f"image {index + 1} of {len(images)}: {exc.detail}"
            raise

    return list(await asyncio.gather(*(one(i, data) for i, data in enumerate(images))))


async def certify_decoded(
    model: LoadedModel,
    image: DecodedImage,
    *,
    calibrated: bool,
    endpoint: str,
    started: float,
    record: bool = True,
) -> SurrogateCertificate:
    """The surrogate certificate of a decoded image; `record` counts it as a served answer."""
    fields = await surrogate_fields(
        model, image, calibrated=calibrated, endpoint=endpoint, started=started, record=record
    )
    return SurrogateCertificate(**fields)


async def surrogate_fields(
    model: LoadedModel,
    image: DecodedImage,
    *,
    calibrated: bool,
    endpoint: str,
    started: float,
    record: bool = True,
) -> dict:
    """The fields of `SurrogateCertificate`, in its order, as plain Python values."""
    m = model.manifest
    shift = m.shift if calibrated else 0.0
    p_a, cert = await model.batcher.submit(image.array, shift, endpoint)
    seconds = time.perf_counter() - started
    if record:
        record_certificate(endpoint, model.name, "surrogate", cert, seconds)
    abstained = bool(cert.abstained)
    return {
        "model": model.name,
        "model_version": m.version,
        "method": "surrogate",
        "predicted_class": None if abstained else int(cert.predicted_class),
        "label": None if abstained else m.classes[cert.predicted_class],
        "abstained": abstained,
        "certified_radius": float(cert.radius),
        "p_a": float(p_a),
        "p_a_lower": max(0.0, float(cert.p_a_lower)),
        "sigma": float(m.sigma),
        "calibrated": calibrated and m.calibration is not None,
        "resized": bool(image.resized),
        "radius_space": _radius_space(model, image),
        "latency_ms": seconds * 1000.0,
    }


async def until_disconnected(work: Awaitable, disconnected: Callable[[], Awaitable[None]] | None):
    """`work`'s result, or ClientDisconnected as soon as `disconnected()` returns."""
    if disconnected is None:
        return await work
    work = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        raise ClientDisconnected("the client closed the connection while its audit ran")
    return work.result()


def agreement(served: SurrogateCertificate, mc: Certificate) -> Agreement:
    """Does the served certificate claim more than Monte-Carlo (`overestimated`: a larger
    radius, or another class)?"""
    over = overestimated(
        -1 if served.abstained else served.predicted_class,
        served.certified_radius,
        -1 if mc.abstained else mc.predicted_class,
        mc.radius,
    )
    return Agreement(
        same_class=served.predicted_class == mc.predicted_class,
        radius_gap=served.certified_radius - mc.radius,
        overestimated=over,
    )


async def certify_sampled(
    model: LoadedModel,
    pool: AuditPool,
    data: bytes,
    params: SampledParams,
    *,
    calibrated: bool,
    resize: bool,
    decoder: Decoder,
    source: str = "request",
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> SampledCertificate:
    """Monte-Carlo CERTIFY on the audit pool, and its agreement with the surrogate; the audit is
    cancelled as soon as `disconnected()` returns (the client has gone)."""
    endpoint = "/certify/sampled"
    started = time.perf_counter()
    m = model.manifest
    image = await decode(model, decoder, data, resize=resize)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    job = AuditJob(params.n0 + params.n)
    run = lambda: monte_carlo(  # noqa: E731
        model, image.array, n0=params.n0, n=params.n, alpha=params.alpha,
        batch_size=params.batch_size, seed=seed, job=job,
    )  # fmt: skip
    # AuditQueueFull (429) before any work is done
    pending = pool.submit(run, job, rate_hint=model.base_samples_per_second)
    try:
        served = await certify_decoded(
            model, image, calibrated=calibrated, endpoint=f"{endpoint}:surrogate",
            started=time.perf_counter(), record=False,
        )  # fmt: skip
        result, queued, compute = await until_disconnected(pending, disconnected)
    except BaseException as exc:
        job.cancel(exc if isinstance(exc, AccsmoothError) else ClientDisconnected("cancelled"))
        raise
    cert = result.certificate
    seconds = time.perf_counter() - started
    metrics.QUEUE_SECONDS.labels(endpoint, model.name).observe(queued)
    metrics.COMPUTE_SECONDS.labels(endpoint, model.name).observe(compute)
    record_certificate(endpoint, model.name, "monte_carlo", cert, seconds)
    agree = agreement(served, cert)
    metrics.AUDITS.labels(model.name, source).inc()
    metrics.AUDIT_SAME_CLASS.labels(model.name, source).inc(agree.same_class)
    metrics.AUDIT_OVERESTIMATED.labels(model.name, source).inc(agree.overestimated)
    metrics.AUDIT_RADIUS_GAP.labels(model.name, source).observe(agree.radius_gap)
    return SampledCertificate(
        model=model.name,
        model_version=m.version,
        predicted_class=cert.predicted_class,
        label=None if cert.abstained else m.classes[cert.predicted_class],
        abstained=cert.abstained,
        certified_radius=cert.radius,
        p_a_lower=cert.p_a_lower,
        sigma=m.sigma,
        counts=[int(c) for c in result.counts],
        counts0=[int(c) for c in result.counts0],
        n0=params.n0,
        n=params.n,
        alpha=params.alpha,
        batch_size=params.batch_size,
        seed=seed,
        latency_ms=seconds * 1000.0,
        samples_per_second=(params.n0 + params.n) / max(compute, 1e-9),
        surrogate=served,
        agreement=agree,
    )
