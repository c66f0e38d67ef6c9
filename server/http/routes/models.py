"""GET /models and /models/{name}: what each bundle is, how it is served, whether it drifts."""

from __future__ import annotations

from fastapi import APIRouter

from accsmooth.smoothing import max_certifiable_radius
from server.http.deps import RegistryDep, SettingsDep, ShadowDep
from server.http.errors import ModelNotFound
from server.http.openapi import ERRORS
from server.http.schemas import ModelDetail, ModelList, ModelSummary
from server.registry import LoadedModel
from server.sampled.hybrid import plan_for

router = APIRouter(tags=["models"], responses=ERRORS)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # the served accuracy /models shows


def _summary(model: LoadedModel, cls=ModelSummary, **extra):
    m = model.manifest
    if m is None:  # failed before its manifest could be read
        return cls(name=model.name, version="?", status=model.status, error=model.error)
    providers = {k: getattr(model, k).provider for k in ("surrogate", "base") if getattr(model, k)}
    p = m.protocol
    accuracy = None
    if model.status == "ready":
        accuracy = {f"{r:g}": round(model.served_accuracy(r), 4) for r in RADII}
    return cls(
        name=model.name,
        version=m.version,
        status=model.status,
        error=model.error,
        description=m.description,
        sigma=m.sigma,
        classes=list(m.classes),
        input_shape=list(m.input.shape),
        calibrated=m.calibration is not None,
        providers=providers,
        max_certifiable_radius=round(max_certifiable_radius(p.n, p.alpha, m.sigma), 4),
        served_certified_accuracy=accuracy,
        **extra,
    )


@router.head("/models", include_in_schema=False)
@router.get("/models")
async def list_models(registry: RegistryDep) -> ModelList:
    """Every bundle found, with its status and serving facts."""
    return ModelList(
        default=registry.default_name,
        models=[_summary(m) for _, m in sorted(registry.models.items())],
    )


@router.head("/models/{name}", include_in_schema=False)
@router.get("/models/{name}")
async def get_model(
    name: str, registry: RegistryDep, shadow: ShadowDep, settings: SettingsDep
) -> ModelDetail:
    """One bundle: manifest facts (protocol, calibration, evaluation) and the provider in use."""
    model = registry.models.get(name)
    if model is None:
        raise ModelNotFound(f"no model named {name!r}; available: {', '.join(registry.models)}")
    m = model.manifest
    if m is None:
        return _summary(model, ModelDetail)
    return _summary(
        model,
        ModelDetail,
        created=m.created,
        noise=m.noise,
        protocol=m.protocol.model_dump(),
        calibration=m.calibration.model_dump() if m.calibration else None,
        evaluation=m.evaluation,
        exporter=m.exporter,
        drift=shadow.drift_status(model) if model.status == "ready" else None,
        hybrid=plan_for(model, settings) if model.status == "ready" else None,
    )
