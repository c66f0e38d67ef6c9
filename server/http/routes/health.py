"""Liveness, readiness (ours and the Open Inference Protocol's) and the Prometheus scrape.

Each answers HEAD as well as GET (load balancers and probes often send HEAD).
Live: the process answers. Ready: every bundle is loaded and warmed up, in every worker process
(`server.readiness`), and the server is not draining after SIGTERM; otherwise 503 with the
reason (which bundle, which file, what is wrong, how many workers are ready) in the usual error
body.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import metrics
from server.http.deps import RegistryDep
from server.http.errors import error_body
from server.http.schemas import Health

router = APIRouter(tags=["health"])


def _not_ready(registry, reason: str | None = None) -> JSONResponse:
    body = error_body("not_ready", reason or registry.reason()) | {"models": registry.statuses()}
    return JSONResponse(body, status_code=503)


def _unready(request: Request, registry) -> JSONResponse | None:
    """The 503 that /readyz and the OIP readiness answer, None when the server is ready:
    draining after SIGTERM, this worker's bundles not all ready, or another worker's."""
    if request.app.state.drain.draining:
        return _not_ready(registry, "the server is shutting down")
    if not registry.ready():
        return _not_ready(registry)
    if missing := request.app.state.readiness.missing():
        return _not_ready(registry, missing)
    return None


@router.head("/livez", include_in_schema=False)
@router.get("/livez")
async def livez() -> Health:
    """The process is up (it may still be loading models)."""
    return Health(status="alive")


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Health, responses={503: {"description": "not ready"}})
async def readyz(request: Request, registry: RegistryDep):
    """200 once every bundle is loaded and warmed up; 503 with the reason otherwise (also
    while the server drains after SIGTERM, and while another worker is still loading)."""
    if unready := _unready(request, registry):
        return unready
    return Health(status="ready", models=registry.statuses())


@router.head("/v2/health/live", include_in_schema=False)
@router.get("/v2/health/live")
async def oip_live() -> dict:
    """Open Inference Protocol liveness."""
    return {"live": True}


@router.head("/v2/health/ready", include_in_schema=False)
@router.get("/v2/health/ready", responses={503: {"description": "not ready"}})
async def oip_ready(request: Request, registry: RegistryDep):
    """Open Inference Protocol readiness."""
    if unready := _unready(request, registry):
        return unready
    return {"ready": True}


@router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    """Prometheus exposition (merged over worker processes)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
