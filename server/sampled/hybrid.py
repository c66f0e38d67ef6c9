"""Hybrid certification: /certify?mode=hybrid answers with the surrogate when its certificate is
clear of the decision boundary, and with Monte-Carlo CERTIFY on the base model when it is not.

    curl -s -X POST 'localhost:8000/certify?mode=hybrid' -F image=@cat.png

The routing rule is `accsmooth.smoothing.hybrid_route` (margin `ACCSMOOTH_HYBRID_MARGIN`), the
same function the exporter's hybrid evaluation uses. The fallback runs CERTIFY with the bundle's
alpha and a smaller sample size chosen to fit `ACCSMOOTH_HYBRID_BUDGET_MS`:

    total = budget * (base-model samples/s measured at warm-up) * SAFETY
    n0 = min(protocol n0, max(MIN_N0, total // 20)),  n = min(protocol n, max(MIN_N, total - n0))

A Monte-Carlo answer is Cohen et al.'s certificate at that n (valid with probability 1 - alpha,
no calibration involved); its largest certifiable radius is sigma * Phi^-1(alpha^(1/n)).
Fallbacks run on their own pool (`server.sampled.pool.SampledPool`:
`ACCSMOOTH_HYBRID_CONCURRENCY` threads niced like sampled certification by
`ACCSMOOTH_SAMPLED_NICE`, at most `ACCSMOOTH_HYBRID_QUEUE` waiting, 503 `overloaded` with a
Retry-After from the queued samples beyond), on the base model's low-thread session; they are
cancelled like sampled certifications when their client goes or at shutdown.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

from accsmooth.sampling import fallback_samples
from accsmooth.smoothing import Certificate, hybrid_route
from server import metrics
from server.fast.surrogate import certify_decoded, decode, record_certificate
from server.http.errors import AccsmoothError, ClientDisconnected, Overloaded
from server.http.schemas import HybridCertificate, HybridPlan
from server.images.decoder import Decoder
from server.registry import LoadedModel
from server.sampled.certify import until_disconnected
from server.sampled.pool import SampledJob, SampledPool, monte_carlo
from server.settings import Settings


def plan_for(model: LoadedModel, settings: Settings) -> HybridPlan:
    """The fallback's (n0, n) for this bundle, from its measured base-model throughput."""
    protocol = model.manifest.protocol
    n0, n = fallback_samples(
        settings.hybrid_budget_ms, model.base_samples_per_second, protocol.n0, protocol.n
    )
    return HybridPlan(
        margin=settings.hybrid_margin,
        budget_ms=settings.hybrid_budget_ms,
        samples_per_second=model.base_samples_per_second,
        n0=n0,
        n=n,
    )


def _fallbacks_full(detail: str, retry_after: int) -> Overloaded:
    metrics.REJECTED.labels("/certify", "hybrid_queue_full").inc()
    return Overloaded(
        f"{detail} (ACCSMOOTH_HYBRID_CONCURRENCY + ACCSMOOTH_HYBRID_QUEUE); retry shortly",
        headers={"Retry-After": str(max(1, retry_after))},
    )


def fallback_pool(settings: Settings) -> SampledPool:
    """The bounded, niced pool the Monte-Carlo fallbacks run on (503 beyond its queue)."""
    return SampledPool(
        settings.hybrid_concurrency,
        settings.hybrid_queue,
        settings.sampled_nice,
        name="hybrid Monte-Carlo fallback",
        full=_fallbacks_full,
        gauges=(metrics.HYBRID_QUEUE_DEPTH, metrics.HYBRID_RUNNING),
    )


async def certify_hybrid(
    model: LoadedModel,
    pool: SampledPool,
    decoder: Decoder,
    data: bytes,
    settings: Settings,
    *,
    calibrated: bool,
    resize: bool,
    shadow=None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> HybridCertificate:
    """The surrogate certificate if `hybrid_route` calls it clear, else CERTIFY at the plan's n."""
    started = time.perf_counter()
    image = await decode(model, decoder, data, resize=resize)
    served = await certify_decoded(
        model, image, calibrated=calibrated, endpoint="/certify", started=started, record=False
    )
    reason = hybrid_route(served.p_a, served.p_a_lower, settings.hybrid_margin)
    if reason != "boundary":
        cert = Certificate(
            served.predicted_class, served.abstained, served.certified_radius, served.p_a_lower
        )
        record_certificate("/certify", model.name, "surrogate", cert, time.perf_counter() - started)
        metrics.HYBRID_ANSWERS.labels(model.name, "surrogate", reason).inc()
        if shadow is not None:
            shadow.offer(model, image.array, data, served)
        return HybridCertificate(
            **served.model_dump(exclude={"method"}),
            method="surrogate",
            reason=reason,
            surrogate_p_a_lower=served.p_a_lower,
        )
    plan = plan_for(model, settings)
    alpha, seed = model.manifest.protocol.alpha, secrets.randbits(63)
    job = SampledJob(plan.n0 + plan.n)
    run = lambda: monte_carlo(  # noqa: E731
        model,
        image.array,
        n0=plan.n0,
        n=plan.n,
        alpha=alpha,
        batch_size=min(settings.sampled_batch_size, plan.n),
        seed=seed,
        job=job,
    )
    pending = pool.submit(run, job, rate_hint=model.base_samples_per_second)
    try:
        result, _, _ = await until_disconnected(pending, disconnected)
    except BaseException as exc:
        job.cancel(exc if isinstance(exc, AccsmoothError) else ClientDisconnected("cancelled"))
        raise
    cert = result.certificate
    seconds = time.perf_counter() - started
    record_certificate("/certify", model.name, "monte_carlo", cert, seconds)
    metrics.HYBRID_ANSWERS.labels(model.name, "monte_carlo", reason).inc()
    fields = served.model_dump(exclude={"method", "predicted_class", "label", "abstained"})
    fields |= {"certified_radius": cert.radius, "p_a_lower": cert.p_a_lower}
    fields |= {"latency_ms": seconds * 1000.0}
    return HybridCertificate(
        **fields,
        method="monte_carlo",
        reason=reason,
        surrogate_p_a_lower=served.p_a_lower,
        predicted_class=cert.predicted_class,
        abstained=cert.abstained,
        label=None if cert.abstained else model.manifest.classes[cert.predicted_class],
        n0=plan.n0,
        n=plan.n,
        alpha=alpha,
        seed=seed,
    )
