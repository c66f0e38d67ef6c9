"""Typed FastAPI dependencies: settings, registry, audit pools, the chosen model, the image bytes.

Routes declare what they need as `Annotated` aliases (`RegistryDep`, `ModelDep`, ...) and stay
a few lines long. Everything here raises domain errors from `server.http.errors`, never HTTP ones.
Every dependency is `async def` although none awaits: FastAPI runs plain `def` dependencies on
its thread pool, and each such hop costs ~0.1-0.3 ms, which the 3 ms fast path cannot spare.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from server.http.errors import (
    InvalidParameter,
    MissingImage,
    TooManyImages,
    Unauthorized,
    UnsupportedMediaType,
)
from server.images.decoder import Decoder
from server.registry import LoadedModel, ModelRegistry
from server.sampled.pool import SampledPool
from server.settings import Settings
from server.shadow.auditor import ShadowAuditor

MULTIPART = "multipart/form-data"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_sampled_pool(request: Request) -> SampledPool:
    return request.app.state.sampled


async def get_decoder(request: Request) -> Decoder:
    return request.app.state.decoder


async def get_shadow(request: Request) -> ShadowAuditor:
    return request.app.state.shadow


async def get_hybrid(request: Request) -> SampledPool:
    return request.app.state.hybrid


async def get_disconnected(request: Request) -> Callable[[], Awaitable[None]]:
    """A coroutine function that returns once the client has closed its connection (to call
    after the body has been read: the next ASGI message is then the disconnect)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return disconnected


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SampledPoolDep = Annotated[SampledPool, Depends(get_sampled_pool)]
ShadowDep = Annotated[ShadowAuditor, Depends(get_shadow)]
DecoderDep = Annotated[Decoder, Depends(get_decoder)]
HybridDep = Annotated[SampledPool, Depends(get_hybrid)]
DisconnectedDep = Annotated[Callable[[], Awaitable[None]], Depends(get_disconnected)]


async def get_model(
    registry: RegistryDep,
    model: Annotated[str | None, Query(description="bundle name (default: default bundle)")] = None,
    radius: Annotated[
        float | None,
        Query(
            ge=0.0,
            allow_inf_nan=False,
            description="the radius you need: the bundle whose served certificates reach it on "
            "the most of its evaluation images answers (instead of naming a model)",
        ),
    ] = None,
) -> LoadedModel:
    if radius is None:
        return registry.get(model)
    if model is not None:
        raise InvalidParameter("give model or radius, not both: radius picks the model")
    return registry.for_radius(radius)


ModelDep = Annotated[LoadedModel, Depends(get_model)]


def _check_key(request: Request, settings: Settings, what: str) -> None:
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized(f"{what} needs the API key: send 'Authorization: Bearer <key>'")


async def require_key_for_sampled(request: Request, settings: SettingsDep) -> None:
    """/certify/sampled is the expensive path: it needs the key whenever one is set."""
    _check_key(request, settings, "/certify/sampled")


async def require_key_for_audits(request: Request, settings: SettingsDep) -> None:
    """GET /audits shows what other clients sent (hashes, classes): same key as /certify/sampled."""
    _check_key(request, settings, "/audits")


async def require_key_for_certify(request: Request, settings: SettingsDep) -> None:
    """/certify needs the key only with ACCSMOOTH_PROTECT_CERTIFY=true."""
    if settings.protect_certify:
        _check_key(request, settings, "/certify")


def check_key_for_hybrid(request: Request, settings: Settings) -> None:
    """mode=hybrid may run Monte-Carlo: it needs the key when one is set, unless
    ACCSMOOTH_PROTECT_HYBRID=false (then only with ACCSMOOTH_PROTECT_CERTIFY=true)."""
    if settings.protect_hybrid or settings.protect_certify:
        _check_key(request, settings, "/certify?mode=hybrid")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _uploads(request: Request, limit: int) -> list[UploadFile]:
    """The files of the multipart field `image`, in order. Parsing stops at the first part
    past `limit` + 1 files or fields, so a body of thousands of tiny parts costs no more than
    a full batch (the caller words the error for exactly `limit` + 1)."""
    try:
        form = await request.form(max_files=limit + 1, max_fields=limit + 1)
    except HTTPException as exc:  # starlette's multipart errors, as 400s
        if exc.status_code == 400 and str(exc.detail).startswith("Too many"):
            raise TooManyImages(
                f"more than {limit + 1} multipart parts sent; at most {limit} image"
                f"{'s' if limit > 1 else ''} per request (ACCSMOOTH_MAX_BATCH for /certify/batch)"
            ) from exc
        raise
    fields = form.getlist("image")
    if not fields:
        raise MissingImage("multipart field 'image' is missing: send the image as a file field")
    if not all(isinstance(f, UploadFile) for f in fields):
        raise MissingImage("multipart field 'image' must be a file upload, not a text value")
    return fields


def _unsupported(media: str, *, raw_allowed: bool = True) -> UnsupportedMediaType:
    got = f"content type {media!r}" if media else "no content type"
    if not raw_allowed:
        return UnsupportedMediaType(f"{got}: send multipart/form-data with file fields 'image'")
    return UnsupportedMediaType(
        f"{got}: send multipart/form-data with a file field 'image', or the raw image bytes"
        " with an image/* content type (image/png, image/jpeg, image/webp, image/bmp)"
    )


async def image_bytes(request: Request) -> bytes:
    """One image: the multipart file `image`, or the whole body sent as `image/*`."""
    media = _media_type(request)
    if media.startswith("image/"):
        return await request.body()
    if media == MULTIPART:
        uploads = await _uploads(request, 1)
        if len(uploads) > 1:
            raise TooManyImages(f"{len(uploads)} images sent; /certify takes one (see /batch)")
        return await uploads[0].read()
    if not media and not await request.body():
        raise MissingImage("no image: the request has no body")
    raise _unsupported(media)


async def image_list(request: Request, settings: SettingsDep) -> list[bytes]:
    """Up to ACCSMOOTH_MAX_BATCH images as repeated multipart `image` fields."""
    media = _media_type(request)
    if media != MULTIPART:
        raise _unsupported(media, raw_allowed=False)
    uploads = await _uploads(request, settings.max_batch)
    if len(uploads) > settings.max_batch:
        raise TooManyImages(
            f"{len(uploads)} images sent, at most {settings.max_batch} per request"
            " (ACCSMOOTH_MAX_BATCH)"
        )
    return [await u.read() for u in uploads]


ImageDep = Annotated[bytes, Depends(image_bytes)]
ImagesDep = Annotated[list[bytes], Depends(image_list)]


def check_samples(settings: Settings, n0: int, n: int, batch_size: int) -> None:
    """Range checks that depend on settings (the static ones live in the Query declarations)."""
    for name, value in (("n0", n0), ("n", n)):
        if value > settings.max_samples:
            raise InvalidParameter(
                f"{name}={value} is over the limit of {settings.max_samples}"
                " samples (ACCSMOOTH_MAX_SAMPLES)"
            )
    if batch_size > settings.max_sampled_batch_size:
        raise InvalidParameter(
            f"batch_size={batch_size} is over the limit of {settings.max_sampled_batch_size}"
            " (ACCSMOOTH_MAX_SAMPLED_BATCH_SIZE)"
        )
