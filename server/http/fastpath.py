"""POST /certify with a raw image body, answered in front of FastAPI's router.

The common request, a raw `image/*` body with plain query values (`model` or `radius`,
`calibrated`, `resize`, `mode=surrogate`), is answered here with the same pipeline and the same
answer as `server.http.routes.certify`, minus what it does not need: routing, dependency
injection, the multipart check, pydantic validation of the answer (the route validates it against
a union of two models) and the standard-library JSON encoder (orjson here). Everything else falls
through to the route unchanged, decided from the headers and query alone before a byte of the body
is read: multipart uploads, `mode=hybrid`, a protected /certify (ACCSMOOTH_PROTECT_CERTIFY), a
repeated, empty, unknown or unusual query value (the route then answers it, or its 422).

The body limit, body deadline, admission limit and HTTP metrics wrap this middleware as they wrap
the route; their errors, the registry's and the pipeline's are answered by the error table
(`server.http.errors`) in the same JSON shape and with the same headers as the app's handler.
"""

from __future__ import annotations

import logging
import math
import time
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from server.fast.surrogate import surrogate_answer
from server.http.errors import (
    AccsmoothError,
    ClientDisconnected,
    error_body,
    log_answered,
    status_of,
)
from server.http.middleware import request_ended, request_started

log = logging.getLogger(__name__)

PATH = "/certify"
TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # pydantic's spellings of a bool
FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
JSON_HEADERS = [(b"content-type", b"application/json")]


def _bool(value: str) -> bool | None:
    value = value.lower()
    return True if value in TRUE else False if value in FALSE else None


def fast_query(query_string: bytes) -> dict | None:
    """The parameters of a request the fast path answers, or None when the route should."""
    params = {"model": None, "radius": None, "calibrated": True, "resize": False}
    seen = set()
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in seen or not value:
            return None
        seen.add(key)
        if key == "model":
            params["model"] = value
        elif key == "radius":
            params["radius"] = _radius(value)
            if params["radius"] is None:
                return None
        elif key in ("calibrated", "resize"):
            params[key] = _bool(value)
            if params[key] is None:
                return None
        elif key != "mode" or value != "surrogate":
            return None
    if params["model"] is not None and params["radius"] is not None:
        return None  # the route's 422: one or the other
    return params


def _radius(value: str) -> float | None:
    """A finite radius >= 0, as the route's Query(ge=0, allow_inf_nan=False) accepts."""
    try:
        radius = float(value)
    except ValueError:
        return None
    return radius if math.isfinite(radius) and radius >= 0.0 else None


async def read_body(receive: Receive) -> bytes:
    """The whole request body; ClientDisconnected if the client goes first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client closed the connection before sending its body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes, headers: dict | None = None) -> None:
    head = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    for key, value in (headers or {}).items():
        head.append((key.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class FastCertify:
    """Answers plain raw-body POST /certify requests; passes every other request to `app`."""

    def __init__(self, app: ASGIApp, state):
        self.app = app
        self.state = state  # the FastAPI app's state: settings, registry, decoder, shadow

    def takes(self, scope: Scope) -> dict | None:
        """The fast path's parameters for this request (method, path, headers, query of an
        ASGI scope), or None when the routes should answer it."""
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return None
        if self.state.settings.protect_certify:
            return None
        media = b""
        for key, value in scope["headers"]:
            if key == b"content-type":
                media = value.split(b";", 1)[0].strip().lower()
                break
        if not media.startswith(b"image/"):
            return None
        return fast_query(scope["query_string"])

    def model(self, params: dict):
        """The bundle the request names (`model` or `radius`); the registry's domain errors."""
        if params["radius"] is None:
            return self.state.registry.get(params["model"])
        return self.state.registry.for_radius(params["radius"])

    async def certificate(
        self, model, params: dict, data: bytes, started: float, alone: bool = False
    ) -> bytes:
        """The JSON certificate of one image's bytes; domain errors as `surrogate_answer`."""
        state = self.state
        answer = await surrogate_answer(
            model,
            data,
            calibrated=params["calibrated"],
            resize=params["resize"],
            decoder=state.decoder,
            started=started,
            shadow=state.shadow,
            alone=alone,
        )
        return orjson.dumps(answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self.takes(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            model = self.model(params)
            data = await read_body(receive)
            body = await self.certificate(model, params, data, started)
            status, headers = 200, {}
        except AccsmoothError as exc:
            status, body, headers = error_answer(exc)
        await send_json(send, status, body, headers)


def error_answer(exc: AccsmoothError) -> tuple[int, bytes, dict]:
    """The error table's (status, JSON body, headers) for `exc`, logged as the app's handler
    logs it: 499 (the client left) is worth a line, 5xx a warning."""
    status = status_of(exc)
    log_answered(log, "POST", PATH, status, exc)
    return status, orjson.dumps(error_body(exc.code, exc.detail)), exc.headers or {}


class FastLane:
    """The fast path for `server.http.protocol`, which answers a plain raw-body POST /certify
    that arrived whole in one read without building an ASGI request at all (uvicorn's request
    cycle, task and the gate's layers cost about a tenth of the request). It applies what the
    gate would: the body limit (the protocol only hands over declared bodies within it), the
    admission limit (the gate's own `AdmissionLimit`, so both paths share its slots) and the
    HTTP metrics; the body deadline has nothing to time, the body being complete."""

    def __init__(self, fast: FastCertify, admission, max_body_bytes: int):
        self.fast = fast
        self.admission = admission
        self.max_body_bytes = max_body_bytes

    def takes(self, scope: Scope, content_length: int) -> dict | None:
        if content_length > self.max_body_bytes:
            return None  # the gate answers 413
        return self.fast.takes(scope)

    async def respond(
        self, params: dict, data: bytes, alone: bool = False
    ) -> tuple[int, bytes, dict]:
        """(status, JSON body, headers) for a whole request; `alone`: no other request is in
        the server, so the model may run without the batcher's hand-off."""
        started = time.perf_counter()
        status = 500  # if the answer dies
        in_flight = request_started(PATH)
        admitted = False
        try:
            model = self.fast.model(params)
            self.admission.take(PATH)  # as the gate: once the body is complete (it is)
            admitted = True
            body = await self.fast.certificate(model, params, data, started, alone)
            status, headers = 200, {}
        except AccsmoothError as exc:
            status, body, headers = error_answer(exc)
        finally:
            if admitted:
                self.admission.in_flight -= 1
            request_ended(in_flight, PATH, "POST", status)
        return status, body, headers
