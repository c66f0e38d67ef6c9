"""Pure ASGI middleware: the request-body limit and deadline, admission, HTTP metrics.

`BodyLimit` answers 413 from the `Content-Length` header before reading a byte, and counts
the bytes of bodies streamed without one (chunked uploads): past the limit the next read
raises `BodyTooLarge`, which the error table turns into 413, so no body is ever held whole
beyond `ACCSMOOTH_MAX_BODY_BYTES`. `BodyDeadline` gives the whole body
`ACCSMOOTH_BODY_TIMEOUT_S` seconds from the end of the headers: a client that sends it slower
(one byte every few seconds) gets 408 and its connection closed; after SIGTERM's grace period
bodies still being read get 503 `shutting_down`. `AdmissionLimit` answers 503 to fast-path
requests beyond `ACCSMOOTH_MAX_IN_FLIGHT` in flight, counted from the moment a request's body
is complete: the micro-batcher's queue only bounds the images that reached the model, while
under overload the backlog builds up before it, in the event loop (parsing, decoding), where
nothing else would bound it; counting bodies still on the wire instead would let slow senders
hold every slot. `HttpMetrics` counts answers by endpoint and status (499: the client closed
the connection first) and keeps the in-flight gauge; endpoints are a fixed set of labels, so
clients cannot grow the metric's cardinality with made-up paths.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.http.errors import (
    STATUS,
    BodyTooLarge,
    Overloaded,
    RequestTimeout,
    ShuttingDown,
    error_body,
)
from server.lifecycle import Drain

ENDPOINTS = frozenset(
    {
        "/certify",
        "/certify/batch",
        "/certify/sampled",
        "/livez",
        "/readyz",
        "/models",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/",
        "/audits",
        "/v2",
    }
)
OIP_MODEL = "/v2/models/"


def endpoint_label(path: str) -> str:
    """A bounded label for a request path."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/models/"):
        return "/models/{name}"
    if path.startswith(OIP_MODEL):
        for suffix in ("/infer", "/ready"):
            if path.endswith(suffix):
                return "/v2/models/{name}" + suffix
        return "/v2/models/{name}"
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


def _body_complete(message: Message) -> bool:
    return message["type"] != "http.request" or not message.get("more_body", False)


class BodyDeadline:
    """408 for a body not complete `timeout_s` after the headers; 503 once the drain after
    SIGTERM has run out of grace. The deadline only covers the body: later reads (waiting
    for the client to disconnect during a long audit) pass through untouched."""

    POLL_S = 1.0  # how often a waiting read looks at the drain

    def __init__(self, app: ASGIApp, timeout_s: float, drain: Drain | None = None):
        self.app = app
        self.timeout_s = timeout_s
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False

        async def timed() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            while True:
                if self.drain is not None and self.drain.expired:
                    raise ShuttingDown("the server is shutting down: the body came too late")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RequestTimeout(
                        f"the request body was not complete within {self.timeout_s:g} s"
                        " (ACCSMOOTH_BODY_TIMEOUT_S); send it faster"
                    )
                try:  # asyncio.timeout: a timer on this task, not a task per read as wait_for
                    async with asyncio.timeout(min(remaining, self.POLL_S)):
                        message = await receive()
                except TimeoutError:
                    continue  # nothing was consumed: look at the deadlines again
                complete = _body_complete(message)
                return message

        await self.app(scope, timed, send)


class AdmissionLimit:
    """503 `overloaded` (Retry-After: 1) for /certify, /certify/batch and OIP infer requests beyond
    `limit` in flight. A request takes its slot when its body is complete (before any decoding
    or inference), so clients that send their bodies slowly hold no slot while they do:
    shedding must cost much less than serving, and slow senders must not starve the rest."""

    PATHS = frozenset({"/certify", "/certify/batch"})

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0  # touched on the event loop only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            path in self.PATHS or (path.startswith(OIP_MODEL) and path.endswith("/infer"))
        ):
            await self.app(scope, receive, send)
            return
        admitted = False

        async def counted() -> Message:
            nonlocal admitted
            message = await receive()
            if not admitted and message["type"] == "http.request" and _body_complete(message):
                self.take(path)
                admitted = True
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            if admitted:
                self.in_flight -= 1

    def take(self, path: str) -> None:
        """Take a slot for a request to `path` whose body is complete; Overloaded when none is
        left. The caller gives it back with `in_flight -= 1` when the request is answered."""
        if self.in_flight >= self.limit:
            metrics.REJECTED.labels(endpoint_label(path), "too_many_in_flight").inc()
            raise Overloaded(
                f"{self.in_flight} fast-path requests in flight"
                f" (ACCSMOOTH_MAX_IN_FLIGHT={self.limit}); retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1


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

        in_flight = request_started(endpoint)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_ended(in_flight, endpoint, scope["method"], status)


def request_started(endpoint: str):
    """Count a request in flight (HttpMetrics, and the protocol's fast lane); returns the gauge
    to hand to `request_ended`."""
    in_flight = metrics.child(metrics.IN_FLIGHT, endpoint)
    in_flight.inc()
    return in_flight


def request_ended(in_flight, endpoint: str, method: str, status: int) -> None:
    """The request is answered with `status`: out of flight, counted by endpoint and status."""
    in_flight.dec()
    metrics.child(metrics.REQUESTS, endpoint, method, str(status)).inc()
