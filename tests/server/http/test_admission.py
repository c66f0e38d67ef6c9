"""The fast path's admission limit: 503 beyond ACCSMOOTH_MAX_IN_FLIGHT requests whose bodies are
in, and clients still sending their bodies hold no slot (slow senders cannot starve the rest)."""

from __future__ import annotations

import asyncio

import pytest

from server.http.errors import Overloaded
from server.http.middleware import AdmissionLimit


def make_app(release: asyncio.Event):
    async def slow(scope, receive, send):
        """An app that reads the body, then waits for `release`, so requests stay in flight."""
        while (await receive()).get("more_body"):
            pass
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return slow


async def request(app, path: str = "/certify", body_sent: asyncio.Event | None = None) -> int:
    """One request; its body arrives once `body_sent` is set (at once without one)."""
    sent: list[dict] = []

    async def receive():
        if body_sent is not None:
            await body_sent.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await app(scope, receive, send)
    return sent[0]["status"]


def test_requests_beyond_the_limit_are_refused_with_overloaded_and_retry_after():
    async def scenario():
        release = asyncio.Event()
        app = AdmissionLimit(make_app(release), limit=2)
        held = [asyncio.create_task(request(app)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:  # the error table answers it 503
            await asyncio.wait_for(request(app, "/certify/batch"), 1.0)
        other = asyncio.create_task(request(app, "/models"))  # not the fast path: admitted
        await asyncio.sleep(0.01)
        assert not other.done()
        release.set()
        done = await asyncio.gather(*held, other)
        after = await request(app)  # slots are free again
        return refused.value, done, after, app.in_flight

    error, held, after, in_flight = asyncio.run(scenario())
    assert error.headers["Retry-After"] == "1"
    assert "ACCSMOOTH_MAX_IN_FLIGHT=2" in error.detail
    assert held == [200, 200, 200] and after == 200 and in_flight == 0


def test_clients_still_sending_their_bodies_hold_no_slot():
    async def scenario():
        release, trickle = asyncio.Event(), asyncio.Event()
        release.set()
        app = AdmissionLimit(make_app(release), limit=2)
        slow = [asyncio.create_task(request(app, body_sent=trickle)) for _ in range(50)]
        await asyncio.sleep(0.01)
        status = await asyncio.wait_for(request(app), 1.0)  # 50 slow senders, 2 slots
        in_flight_meanwhile = app.in_flight
        trickle.set()
        await asyncio.gather(*slow, return_exceptions=True)
        return status, in_flight_meanwhile, app.in_flight

    status, meanwhile, after = asyncio.run(scenario())
    assert status == 200 and meanwhile == 0 and after == 0
