"""POST /certify, /certify/batch and /certify/sampled: thin wrappers over `server.fast.surrogate`.

The image comes as the multipart file field `image` or as the raw body with an `image/*`
content type (see `server.http.deps.image_bytes`). Parameters are query parameters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from server.fast import surrogate
from server.http.deps import (
    DecoderDep,
    DisconnectedDep,
    HybridDep,
    ImageDep,
    ImagesDep,
    ModelDep,
    SampledPoolDep,
    SettingsDep,
    ShadowDep,
    check_key_for_hybrid,
    check_samples,
    require_key_for_certify,
    require_key_for_sampled,
)
from server.http.openapi import BATCH_BODY, ERRORS, IMAGE_BODY
from server.http.schemas import HybridCertificate, SampledCertificate, SurrogateCertificate
from server.sampled import certify as sampled
from server.sampled import hybrid

router = APIRouter(tags=["certify"], responses=ERRORS)

Calibrated = Annotated[
    bool, Query(description="subtract the bundle's calibration shift (false: the paper's raw rule)")
]
Resize = Annotated[
    bool, Query(description="resize other sizes to the model's; the radius is then in that space")
]
Mode = Annotated[
    Literal["surrogate", "hybrid"],
    Query(description="hybrid: Monte-Carlo answers when the surrogate is near the boundary"),
]


@router.post(
    "/certify",
    dependencies=[Depends(require_key_for_certify)],
    openapi_extra=IMAGE_BODY,
)
async def certify(
    request: Request,
    model: ModelDep,
    data: ImageDep,
    settings: SettingsDep,
    shadow: ShadowDep,
    fallbacks: HybridDep,
    decoder: DecoderDep,
    disconnected: DisconnectedDep,
    calibrated: Calibrated = True,
    resize: Resize = False,
    mode: Mode = "surrogate",
) -> HybridCertificate | SurrogateCertificate:
    """Certify one image with the surrogate: class and certified L2 radius in one forward pass
    (mode=hybrid: Monte-Carlo answers instead when the surrogate is near the boundary)."""
    if mode == "hybrid":
        check_key_for_hybrid(request, settings)
        return await hybrid.certify_hybrid(
            model,
            fallbacks,
            decoder,
            data,
            settings,
            calibrated=calibrated,
            resize=resize,
            shadow=shadow,
            disconnected=disconnected,
        )
    return await surrogate.certify_surrogate(
        model,
        data,
        calibrated=calibrated,
        resize=resize,
        decoder=decoder,
        shadow=shadow,
    )


@router.post(
    "/certify/batch",
    dependencies=[Depends(require_key_for_certify)],
    openapi_extra=BATCH_BODY,
)
async def certify_batch(
    model: ModelDep,
    images: ImagesDep,
    decoder: DecoderDep,
    calibrated: Calibrated = True,
    resize: Resize = False,
) -> list[SurrogateCertificate]:
    """Certify up to ACCSMOOTH_MAX_BATCH images (repeated multipart `image` fields), in order."""
    return await surrogate.certify_many(
        model, images, calibrated=calibrated, resize=resize, decoder=decoder
    )


@router.post(
    "/certify/sampled",
    dependencies=[Depends(require_key_for_sampled)],
    openapi_extra=IMAGE_BODY,
)
async def certify_sampled(
    model: ModelDep,
    pool: SampledPoolDep,
    data: ImageDep,
    settings: SettingsDep,
    decoder: DecoderDep,
    disconnected: DisconnectedDep,
    n0: Annotated[
        int | None, Query(ge=1, description="selection samples (default: manifest)")
    ] = None,
    n: Annotated[
        int | None, Query(ge=1, description="estimation samples (default: manifest)")
    ] = None,
    alpha: Annotated[float | None, Query(gt=0.0, lt=1.0, description="failure probability")] = None,
    batch_size: Annotated[int | None, Query(ge=1, description="noisy copies per pass")] = None,
    seed: Annotated[int | None, Query(ge=0, lt=2**63, description="noise seed")] = None,
    calibrated: Calibrated = True,
    resize: Resize = False,
) -> SampledCertificate:
    """Audit: Cohen et al.'s Monte-Carlo CERTIFY on the base model, compared with /certify."""
    protocol = model.manifest.protocol
    params = sampled.SampledParams(
        n0=n0 or protocol.n0,
        n=n or protocol.n,
        alpha=alpha or protocol.alpha,
        batch_size=batch_size or settings.sampled_batch_size,
        seed=seed,
    )
    check_samples(settings, params.n0, params.n, params.batch_size)
    return await sampled.certify_sampled(
        model,
        pool,
        data,
        params,
        calibrated=calibrated,
        resize=resize,
        decoder=decoder,
        disconnected=disconnected,
    )
