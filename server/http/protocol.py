"""uvicorn's HTTP protocol (httptools) with limits on the request line and headers.

uvicorn times out idle keep-alive connections but not a request whose headers arrive slowly,
nor a connection that never sends a byte, and it has no size limit on the headers with
httptools. `GuardedHttpToolsProtocol` adds both, before the app sees the request:

  - the request line and headers must arrive within `ACCSMOOTH_HEADER_TIMEOUT_S` of the
    connection opening (first request) or of the request's first byte (later ones on a
    keep-alive connection): else 408 and the connection closes (closes silently when not a
    byte was sent);
  - they may not exceed `ACCSMOOTH_MAX_HEADER_BYTES`: else 431 and the connection closes.

Both answers are the usual JSON error body. The body's own deadline is `server.http.middleware`'s.

It also writes each response's status line and headers together with the first piece of its
body, in one write (uvicorn writes them as soon as the app starts its answer, and the body in
a second write): one segment instead of two for a small answer, so the client wakes once.
`python -m server` uses this protocol; with plain uvicorn pass
`--http server.http.protocol:GuardedHttpToolsProtocol`.
"""

from __future__ import annotations

import functools
import http
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server import metrics
from server.http.errors import (
    AccsmoothError,
    HeadersTooLarge,
    RequestTimeout,
    error_body,
    status_of,
)

log = logging.getLogger(__name__)


@functools.cache
def limits() -> tuple[float, int]:
    """(header timeout in s, header size limit in bytes) from the ACCSMOOTH_* environment."""
    from server.settings import Settings

    settings = Settings()
    return settings.header_timeout_s, settings.max_header_bytes


def error_response(error: AccsmoothError) -> bytes:
    """A whole HTTP/1.1 response for `error` that closes the connection."""
    status = status_of(error)
    body = json.dumps(error_body(error.code, error.detail)).encode()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class HeadWithBody:
    """A transport that holds the write of a response's head (status line and headers) and
    sends it with the next write, so that a small answer leaves in one segment. Anything else
    (close, flow control) goes to the real transport, after what is held."""

    __slots__ = ("transport", "holding", "held")

    def __init__(self, transport):
        self.transport = transport
        self.holding = False  # True while uvicorn writes the head
        self.held = b""

    def write(self, data: bytes) -> None:
        if self.holding:
            self.held += data
            return
        if self.held:
            data, self.held = self.held + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        if self.held:
            held, self.held = self.held, b""
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name):
        return getattr(self.transport, name)


def coalesce_head(cycle) -> None:
    """Make `cycle` (uvicorn's RequestResponseCycle) write its head with its body."""
    transport = HeadWithBody(cycle.transport)
    cycle.transport = transport
    send = cycle.send

    async def send_head_with_body(message) -> None:
        transport.holding = message["type"] == "http.response.start"
        try:
            await send(message)
        finally:
            if transport.holding:
                transport.holding = False
            else:  # a body (or nothing, for HEAD): what is held goes now
                transport.flush()

    cycle.send = send_head_with_body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header deadline and a header size limit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_header_bytes = limits()
        self._header_timer = None  # armed while a request line and headers are awaited
        self._counting = True  # bytes received are request line and headers
        self._header_bytes = 0
        self._tail = b""  # last bytes seen, to find a blank line split across two reads
        self._received_any = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        if self._counting:  # count up to the blank line that ends the headers, before parsing
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            head = len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._header_bytes += head
            self._tail = seen[-3:]
            if self._header_bytes > self.max_header_bytes:
                error = HeadersTooLarge(
                    f"the request line and headers exceed {self.max_header_bytes} bytes"
                    " (ACCSMOOTH_MAX_HEADER_BYTES)"
                )
                self._refuse(error, "headers_too_large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._counting = False
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle:  # a new request's cycle (not a websocket upgrade)
            coalesce_head(self.cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._counting, self._header_bytes, self._tail = True, 0, b""

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._received_any:  # an idle connection: nothing to answer
            metrics.REJECTED.labels("other", "idle_connection").inc()
            self.transport.close()
            return
        error = RequestTimeout(
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s"
            " (ACCSMOOTH_HEADER_TIMEOUT_S)"
        )
        self._refuse(error, "header_timeout")

    def _refuse(self, error: AccsmoothError, reason: str) -> None:
        self._disarm_header_timer()
        metrics.REJECTED.labels("other", reason).inc()
        log.info("%s from %s: %s", reason, self.client, error.detail)
        self.transport.write(error_response(error))
        self.transport.close()
