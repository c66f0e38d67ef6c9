"""The body limit (413 from Content-Length before reading, and from counting a streamed body)
and the body deadline (408 for a body sent too slowly)."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.http.errors import RequestTimeout
from server.http.middleware import BodyDeadline, BodyLimit, endpoint_label


async def echo_length(scope, receive, send):
    """A tiny ASGI app that reads the whole body, then answers its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def call(app, headers, chunks):
    """Run one request through `app`; returns (status, body, chunks actually read)."""
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        read += 1
        last = read >= len(chunks)
        return {"type": "http.request", "body": chunks[read - 1], "more_body": not last}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/certify", "headers": headers}
    try:
        asyncio.run(app(scope, receive, send))
    except Exception as exc:  # noqa: BLE001 - the app itself does not map errors here
        return type(exc).__name__, None, read
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:]), read


def test_a_declared_length_over_the_limit_is_refused_without_reading():
    app = BodyLimit(echo_length, max_bytes=1000)
    status, body, read = call(app, [(b"content-length", b"5000")], [b"x" * 5000])
    assert status == 413 and read == 0
    assert json.loads(body)["error"] == "body_too_large"


def test_a_streamed_body_stops_being_read_once_over_the_limit():
    app = BodyLimit(echo_length, max_bytes=1000)
    chunks = [b"x" * 400] * 100  # 40 kB in 400-byte chunks, no Content-Length
    status, _, read = call(app, [(b"transfer-encoding", b"chunked")], chunks)
    assert status == "BodyTooLarge"  # the app's error handler turns this into 413
    assert read == 3  # 1200 bytes: the rest of the body was never read


def test_bodies_within_the_limit_pass_untouched():
    app = BodyLimit(echo_length, max_bytes=1000)
    status, body, _ = call(app, [(b"content-length", b"800")], [b"x" * 500, b"y" * 300])
    assert status == 200 and body == b"800"


def test_endpoint_labels_are_a_fixed_set():
    assert endpoint_label("/certify") == "/certify"
    assert endpoint_label("/models/cifar10") == "/models/{name}"
    assert endpoint_label("/etc/passwd") == "other"


def test_a_body_sent_too_slowly_is_cut_off_with_request_timeout():
    async def never():
        await asyncio.Event().wait()  # the client sent its headers, then nothing

    async def scenario():
        app = BodyDeadline(echo_length, timeout_s=0.05)
        scope = {"type": "http", "method": "POST", "path": "/certify", "headers": []}
        with pytest.raises(RequestTimeout) as info:
            await app(scope, never, None)
        return info.value

    error = asyncio.run(scenario())
    assert "ACCSMOOTH_BODY_TIMEOUT_S" in error.detail and error.headers["Connection"] == "close"


def test_reads_after_the_body_are_not_under_the_body_deadline():
    messages = [{"type": "http.request", "body": b"x", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(0.2)  # a later read: waits for the client to disconnect
        return {"type": "http.disconnect"}

    seen = []

    async def app(scope, receive, send):
        seen.extend([await receive(), await receive()])

    scope = {"type": "http", "method": "POST", "path": "/certify", "headers": []}
    asyncio.run(BodyDeadline(app, timeout_s=0.05)(scope, receive, None))
    assert seen[1] == {"type": "http.disconnect"}
