"""`server.http.protocol.coalesce_head` on uvicorn's own RequestResponseCycle: a response's head
leaves with its body in one write, and nothing is held back when no body write follows."""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from server.http.protocol import coalesce_head


class Transport:
    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False
        self.events: list[str] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def close(self) -> None:
        self.closed = True
        self.events.append("close")

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def cycle(transport: Transport, method: str = "POST", keep_alive: bool = True):
    scope = {"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []}
    log = logging.getLogger("test")
    made = RequestResponseCycle(
        scope=scope,
        transport=transport,
        flow=FlowControl(transport),
        logger=log,
        access_logger=log,
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    coalesce_head(made)
    return made


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"{}"}


def test_head_and_body_leave_in_one_write():
    transport = Transport()
    c = cycle(transport)
    asyncio.run(c.send(START))
    assert transport.writes == []
    asyncio.run(c.send(BODY))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"content-length: 2\r\n\r\n{}")


def test_a_body_in_pieces_sends_the_head_with_the_first():
    transport = Transport()
    c = cycle(transport)
    start = {**START, "headers": [(b"content-length", b"4")]}
    asyncio.run(c.send(start))
    asyncio.run(c.send({**BODY, "more_body": True}))
    asyncio.run(c.send({**BODY, "more_body": False}))
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\n{}") and transport.writes[1] == b"{}"


def test_a_head_request_gets_its_head_although_no_body_is_written():
    transport = Transport()
    c = cycle(transport, method="HEAD")
    asyncio.run(c.send(START))
    asyncio.run(c.send({"type": "http.response.body", "body": b""}))
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n")


def test_closing_sends_what_is_held_first():
    transport = Transport()
    c = cycle(transport, keep_alive=False)
    asyncio.run(c.send(START))
    c.transport.close()
    assert transport.events == ["write", "close"]
    assert transport.writes[0].endswith(b"\r\n\r\n")
