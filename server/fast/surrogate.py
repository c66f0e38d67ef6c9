"""The fast path: bytes -> decoded image -> micro-batcher (surrogate) -> certificate.

    certify_surrogate:  decode (Pillow) -> micro-batcher (surrogate, one ORT call per batch)
                        -> accsmooth.smoothing.certify_batch with the bundle's
                        (n, alpha, sigma, shift)

`/certify`, `/certify/batch`, the raw-body fast path (`server.http.fastpath`) and the
surrogate half of `/certify/sampled` and `mode=hybrid` all go through here. Routes only parse
the HTTP request and call these; metrics are recorded here.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from accsmooth.images import DecodedImage
from accsmooth.smoothing import Certificate
from server import metrics
from server.http.errors import AccsmoothError
from server.http.schemas import SurrogateCertificate
from server.images.decoder import Decoder
from server.registry import LoadedModel

if TYPE_CHECKING:
    from server.shadow.auditor import ShadowAuditor


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
    metrics.child(metrics.REQUEST_SECONDS, endpoint, model).observe(seconds)
    metrics.child(metrics.CERTIFICATES, endpoint, model, method).inc()
    if cert.abstained:
        metrics.child(metrics.ABSTENTIONS, endpoint, model, method).inc()
    else:
        metrics.child(metrics.RADIUS, endpoint, model, method).observe(cert.radius)


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
        model,
        data,
        calibrated=calibrated,
        resize=resize,
        decoder=decoder,
        endpoint=endpoint,
        started=started,
        shadow=shadow,
    )
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
    alone: bool = False,
) -> dict:
    """`certify_surrogate` as a plain dict of the SurrogateCertificate fields (no pydantic):
    what `server.http.fastpath` serializes straight to JSON. `alone`: no other request is in
    the server (see `MicroBatcher.submit`)."""
    started = started or time.perf_counter()
    image = await decode(model, decoder, data, resize=resize)
    fields = await surrogate_fields(
        model, image, calibrated=calibrated, endpoint=endpoint, started=started, alone=alone
    )
    if shadow is not None and shadow.rate > 0:  # never blocks; see server.shadow.auditor
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
                model,
                data,
                calibrated=calibrated,
                resize=resize,
                decoder=decoder,
                endpoint="/certify/batch",
                started=started,
            )
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
    alone: bool = False,
) -> dict:
    """The fields of `SurrogateCertificate`, in its order, as plain Python values."""
    m = model.manifest
    shift = m.shift if calibrated else 0.0
    p_a, cert = await model.batcher.submit(image.array, shift, endpoint, alone=alone)
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
