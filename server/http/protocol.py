"""uvicorn's HTTP protocol (httptools) with limits on the request line and headers, and the
fast lane for /certify.

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

The fast lane: a plain raw-body POST /certify (what `server.http.fastpath` takes) that arrives
whole in one read, on an HTTP/1.1 connection with no answer pending, is answered here by the
app's `FastLane`, with no ASGI request cycle, task or middleware (35-40 us of a 0.3 ms request);
the lane applies the body limit, admission slots and HTTP metrics itself, and tells the batcher
when the request is the only one in the worker. Everything else takes uvicorn's ASGI path.
uvicorn's access log (off in `python -m server`) does not see lane requests; the HTTP metrics do.

`python -m server` uses this protocol; with plain uvicorn pass
`--http server.http.protocol:GuardedHttpToolsProtocol`.
"""

from __future__ import annotations

import functools
import http
import json
import logging
import urllib.parse

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

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


def one_whole_request(data: bytes) -> tuple[int, bytes] | None:
    """(content length, body) when `data` is exactly one request with a Content-Length body,
    head and body complete, nothing after it; None otherwise (chunked, partial, pipelined)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0 or b"\r\ntransfer-encoding:" in head:
        return None
    stop = head.find(b"\r\n", at + 2)
    value = head[at + 17 : stop if stop >= 0 else len(head)].strip()
    if not value.isdigit() or end + 4 + int(value) != len(data):
        return None
    return int(value), data[end + 4 :]


def find_lane(app):
    """The app's `FastLane` (`server.http.app.AccsmoothApp.lane`) under uvicorn's wrappers."""
    for _ in range(8):
        lane = getattr(app, "lane", None)
        if lane is not None:
            return lane
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class _NoEvent:
    def set(self) -> None: ...


class LaneCycle:
    """What uvicorn's protocol needs of a request cycle while the fast lane answers one: whether
    the answer is written, whether to keep the connection (uvicorn's `shutdown()` clears it),
    and the hooks `connection_lost()` pokes. While it is incomplete, a request that arrives
    behind it is queued by uvicorn as a pipelined one, so answers keep their order."""

    __slots__ = ("keep_alive", "response_complete", "disconnected", "message_event")

    def __init__(self, keep_alive: bool):
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.message_event = _NoEvent()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header deadline and a header size limit, and the fast lane:
    a plain raw-body POST /certify that arrives whole in one read (the usual request: a small
    image on a keep-alive connection) is answered straight from here by the app's `FastLane`,
    without uvicorn's ASGI request cycle and task or the gate's middleware; any other request,
    or one that arrives in pieces or behind another, takes the ASGI path as before."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_header_bytes = limits()
        self._header_timer = None  # armed while a request line and headers are awaited
        self._counting = True  # bytes received are request line and headers
        self._header_bytes = 0
        self._tail = b""  # last bytes seen, to find a blank line split across two reads
        self._received_any = False
        self._lane = find_lane(self.app)
        self._between_requests = True  # the parser is not inside a request
        self._whole: tuple[int, bytes] | None = None  # this read: one whole request, its body
        self._lane_params: dict | None = None  # the request being parsed goes to the lane

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
        self._whole = (
            one_whole_request(data) if self._lane is not None and self._between_requests else None
        )
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._between_requests = False
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._counting = False
        if self._whole is not None:
            self._lane_params = self._lane_takes(self._whole[0])
            if self._lane_params is not None:
                return  # no ASGI cycle: answered at on_message_complete
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle:  # a new request's cycle (not a websocket upgrade)
            coalesce_head(self.cycle)

    def _lane_takes(self, content_length: int) -> dict | None:
        """The fast lane's parameters for the request whose headers just ended, or None."""
        parser = self.parser
        if parser.get_http_version() != "1.1" or self.expect_100_continue:
            return None
        if parser.should_upgrade() or self.pipeline:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # behind an answer still being written: uvicorn queues it
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {
            "type": "http",
            "method": parser.get_method().decode("ascii"),
            "path": path,
            "headers": self.headers,
            "query_string": url.query or b"",
        }
        return self._lane.takes(scope, content_length)

    def on_body(self, body: bytes) -> None:
        if self._lane_params is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._between_requests = True
        params, self._lane_params = self._lane_params, None
        if params is None:
            super().on_message_complete()
            return
        cycle = LaneCycle(keep_alive=self.parser.should_keep_alive())
        self.cycle = cycle
        task = self.loop.create_task(self._answer_lane(params, self._whole[1], cycle))
        task.add_done_callback(self.tasks.discard)  # uvicorn's shutdown waits for its tasks
        self.tasks.add(task)

    async def _answer_lane(self, params: dict, data: bytes, cycle: LaneCycle) -> None:
        try:
            alone = len(self.tasks) == 1  # this request's task: no other request to batch with
            status, body, headers = await self._lane.respond(params, data, alone)
        except Exception:  # noqa: BLE001 - as uvicorn does for an app that raises: a 500
            log.exception("the fast lane failed on POST /certify")
            detail = "the server failed to answer; see its log"
            status, body, headers = 500, json.dumps(error_body("internal", detail)).encode(), {}
            cycle.keep_alive = False
        if self.transport.is_closing():  # the client left: nothing to write to
            cycle.response_complete = True
            return
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        for name, value in headers.items():
            head.append(f"{name.lower()}: {value}\r\n".encode("latin-1"))
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", body]
        self.transport.write(b"".join(head))
        cycle.response_complete = True
        if cycle.keep_alive:
            self.on_response_complete()
        else:
            self.transport.close()

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
