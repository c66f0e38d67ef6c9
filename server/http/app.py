"""The app factory: `create_app(settings)` builds the FastAPI app; nothing happens at import.

    uvicorn --factory server.http.app:app_from_env --port 8000     # settings from ACCSMOOTH_*
    python -m server --port 8000 --workers 2                   # the same, with multiprocess metrics

Startup (lifespan): the sampled pool, the shadow auditor, the hybrid fallback pool and the image
decoder are created, the SIGTERM drain is armed (`server.lifecycle`) and bundles load in the
background, so /livez answers at once and /readyz turns 200 when every bundle is warmed up (in
every worker: `server.readiness`).
Every domain error is answered by one handler, through the status table in `server.http.errors`; a
client that hung up mid-request is answered 499 (for the metrics) and logged in one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from server import metrics
from server.http.errors import (
    AccsmoothError,
    ClientDisconnected,
    error_body,
    log_answered,
    status_of,
)
from server.http.fastpath import FastCertify, FastLane
from server.http.middleware import AdmissionLimit, BodyDeadline, BodyLimit, HttpMetrics
from server.http.routes import certify, docs, health, models, oip, shadow_audits, web
from server.images.decoder import Decoder
from server.lifecycle import Drain
from server.readiness import WorkerReadiness
from server.registry import ModelRegistry
from server.sampled.hybrid import fallback_pool
from server.sampled.pool import SampledPool
from server.settings import Settings
from server.shadow.auditor import ShadowAuditor

log = logging.getLogger(__name__)


async def _load(registry: ModelRegistry, readiness: WorkerReadiness) -> None:
    """Load the bundles; once all are ready, say so to the other workers."""
    await registry.load()
    if registry.ready():
        readiness.mark_ready()


@asynccontextmanager
async def lifespan(app: FastAPI):
    registry: ModelRegistry = app.state.registry
    settings: Settings = app.state.settings
    app.state.sampled = SampledPool(
        settings.sampled_concurrency, settings.sampled_queue, settings.sampled_nice
    )
    app.state.shadow = ShadowAuditor(settings)
    app.state.hybrid = fallback_pool(settings)
    app.state.decoder = Decoder(
        settings.max_image_pixels, settings.decode_pixel_budget, niceness=settings.sampled_nice
    )
    drain: Drain = app.state.drain
    drain.start(app.state.sampled, app.state.hybrid)
    drain.install_signal_handlers()
    loading = asyncio.create_task(_load(registry, app.state.readiness), name="load-bundles")
    app.state.loading = loading
    try:
        yield
    finally:
        drain.remove_signal_handlers()
        app.state.readiness.withdraw()
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await registry.close()
        app.state.sampled.shutdown()
        app.state.shadow.shutdown()
        app.state.hybrid.shutdown()
        app.state.decoder.shutdown()
        metrics.mark_worker_dead(os.getpid())


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{loc or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors via the table; FastAPI's own 422/404/405 in the same JSON shape."""

    @app.exception_handler(AccsmoothError)
    async def domain_error(request: Request, exc: AccsmoothError) -> JSONResponse:
        status = status_of(exc)
        log_answered(log, request.method, request.url.path, status, exc)
        body = error_body(exc.code, exc.detail)
        return JSONResponse(body, status_code=status, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        """The client closed the connection mid-request: one log line, counted as 499."""
        error = ClientDisconnected("the client closed the connection before sending its body")
        return await domain_error(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("invalid_parameter", _validation_detail(exc)), status_code=422
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


class AccsmoothApp(FastAPI):
    """FastAPI behind the request gate: every HTTP request first passes, once, the HTTP metrics,
    admission limit, body deadline and body limit (`server.http.middleware`); then a plain
    raw-body POST /certify is answered by the fast path (`server.http.fastpath`) and everything
    else goes on to FastAPI's own stack (its error middleware, the router). The gate sits in
    front of FastAPI rather than inside it so that the fast path skips FastAPI's layers, which
    it does not use, while sharing the very same limit instances with the routes."""

    gate: ASGIApp | None = None
    lane: FastLane | None = None  # the same fast path, for `server.http.protocol` to call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.gate is not None:
            await self.gate(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's stack and router, behind the gate."""
        await super().__call__(scope, receive, send)


def install_gate(app: AccsmoothApp, settings: Settings) -> None:
    """The limits and metrics every HTTP request passes, outermost first, and the fast path;
    the protocol's fast lane shares the fast path and the admission limit's slots."""
    fast = FastCertify(app.routed, state=app.state)
    inner = BodyLimit(fast, max_bytes=settings.max_body_bytes)
    inner = BodyDeadline(inner, timeout_s=settings.body_timeout_s, drain=app.state.drain)
    admission = AdmissionLimit(inner, limit=settings.max_in_flight)
    app.gate = HttpMetrics(admission)  # outermost: counts the 413s too
    app.lane = FastLane(fast, admission, settings.max_body_bytes)


def create_app(settings: Settings) -> AccsmoothApp:
    """A new app serving `settings.models_dir`; bundles load when the app starts."""
    app = AccsmoothApp(
        title="accsmooth",
        summary="Certified-robustness inference: randomized-smoothing certificates in one pass.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from local files by server.http.routes.docs, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = ModelRegistry(settings)
    app.state.drain = Drain(settings.graceful_timeout_s)
    app.state.readiness = WorkerReadiness(settings.ready_dir)
    install_error_handlers(app)
    routers = (certify, models, shadow_audits, health, oip, web, docs)
    for module in routers:
        app.include_router(module.router)
    web.mount_static(app)
    docs.mount_assets(app)
    install_gate(app, settings)
    return app


def configure_logging(level: str) -> None:
    """Log lines of the `server` package next to uvicorn's."""
    logger = logging.getLogger("server")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def app_from_env() -> AccsmoothApp:
    """Uvicorn factory: settings from the ACCSMOOTH_* environment (used by every worker)."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
