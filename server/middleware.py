"""Pure ASGI middleware: the request-body limit and per-request HTTP metrics.

`BodyLimit` answers 413 from the `Content-Length` header before reading a byte, and counts
the bytes of bodies streamed without one (chunked uploads): past the limit the next read
raises `BodyTooLarge`, which the error table turns into 413, so no body is ever held whole
beyond `ACCSMOOTH_MAX_BODY_BYTES`. `AdmissionLimit` answers 503 at once to fast-path requests
beyond `ACCSMOOTH_MAX_IN_FLIGHT` in flight: the micro-batcher's queue only bounds the images
that reached the model, while under overload the backlog builds up before it, in the event
loop (parsing, decoding), where nothing else would bound it. `HttpMetrics` counts answers by
endpoint and status and keeps the in-flight gauge; endpoints are a fixed set of labels, so
clients cannot grow the metric's cardinality with made-up paths.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.errors import STATUS, BodyTooLarge, Overloaded, error_body

ENDPOINTS = frozenset(
    {
        "/certify", "/certify/batch", "/certify/sampled", "/livez", "/readyz", "/models",
        "/metrics", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/", "/audits",
    }
)  # fmt: skip


def endpoint_label(path: str) -> str:
    """A bounded label for a request path."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/models/"):
        return "/models/{name}"
    return "other"


class BodyLimit:
    """413 for request bodies over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"request body is {size} bytes, over the limit of {self.max_bytes}"
            " (ACCSMOOTH_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = self._too_large(declared.decode())
            response = JSONResponse(
                error_body(error.code, error.detail),
                status_code=STATUS[BodyTooLarge],
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"over {received}")
            return message

        await self.app(scope, limited, send)


class AdmissionLimit:
    """503 `overloaded` (Retry-After: 1) for /certify and /certify/batch requests beyond
    `limit` in flight, answered before the body is read: shedding must cost much less than
    serving, or an overloaded server spends all its time saying no."""

    PATHS = frozenset({"/certify", "/certify/batch"})

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0  # touched on the event loop only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            metrics.REJECTED.labels(scope["path"], "too_many_in_flight").inc()
            error = Overloaded(
                f"{self.in_flight} fast-path requests in flight (ACCSMOOTH_MAX_IN_FLIGHT="
                f"{self.limit}); retry shortly"
            )
            response = JSONResponse(
                error_body(error.code, error.detail),
                status_code=STATUS[Overloaded],
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class HttpMetrics:
    """Requests by endpoint, method and status; requests in flight by endpoint."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_label(scope["path"])
        status = 500  # if the app dies before answering

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight = metrics.IN_FLIGHT.labels(endpoint)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            in_flight.dec()
            metrics.REQUESTS.labels(endpoint, scope["method"], str(status)).inc()
