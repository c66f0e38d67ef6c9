"""Sampled certification, `/certify/sampled`: Monte-Carlo CERTIFY on the base model, on the
bounded sampled pool (`server.sampled.pool`), beside the surrogate's answer for the same image.

    certify_sampled:    decode -> sampled pool (CERTIFY on the base model, streamed noise)
                        + the surrogate answer for the same image -> agreement

Not to be confused with shadow audits (`server.shadow`), which re-certify a random fraction of
served /certify answers in the background.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server import metrics
from server.fast.surrogate import certify_decoded, decode, record_certificate
from server.http.errors import AccsmoothError, ClientDisconnected
from server.http.schemas import Agreement, SampledCertificate
from server.images.decoder import Decoder
from server.registry import LoadedModel
from server.sampled.pool import SampledJob, SampledPool, monte_carlo


@dataclass(frozen=True)
class SampledParams:
    """Query parameters of one sampled certification, already range-checked."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    seed: int | None


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


async def certify_sampled(
    model: LoadedModel,
    pool: SampledPool,
    data: bytes,
    params: SampledParams,
    *,
    calibrated: bool,
    resize: bool,
    decoder: Decoder,
    source: str = "request",
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> SampledCertificate:
    """Monte-Carlo CERTIFY on the sampled pool, and its agreement with the surrogate; the audit is
    cancelled as soon as `disconnected()` returns (the client has gone)."""
    endpoint = "/certify/sampled"
    started = time.perf_counter()
    m = model.manifest
    image = await decode(model, decoder, data, resize=resize)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    job = SampledJob(params.n0 + params.n)
    run = lambda: monte_carlo(  # noqa: E731
        model,
        image.array,
        n0=params.n0,
        n=params.n,
        alpha=params.alpha,
        batch_size=params.batch_size,
        seed=seed,
        job=job,
    )
    # AuditQueueFull (429) before any work is done
    pending = pool.submit(run, job, rate_hint=model.base_samples_per_second)
    try:
        served = await certify_decoded(
            model,
            image,
            calibrated=calibrated,
            endpoint=f"{endpoint}:surrogate",
            started=time.perf_counter(),
            record=False,
        )
        result, queued, compute = await until_disconnected(pending, disconnected)
    except BaseException as exc:
        job.cancel(exc if isinstance(exc, AccsmoothError) else ClientDisconnected("cancelled"))
        raise
    cert = result.certificate
    seconds = time.perf_counter() - started
    metrics.QUEUE_SECONDS.labels(endpoint, model.name).observe(queued)
    metrics.COMPUTE_SECONDS.labels(endpoint, model.name).observe(compute)
    record_certificate(endpoint, model.name, "monte_carlo", cert, seconds)
    agree = Agreement.between(served, cert)
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
