"""The fast path's admission limit: 503 at once beyond ACCSMOOTH_MAX_IN_FLIGHT requests."""

from __future__ import annotations

import asyncio
import json

from server.middleware import AdmissionLimit


def make_app(release: asyncio.Event):
    async def slow(scope, receive, send):
        """An app whose answers wait for `release`, so requests stay in flight."""
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return slow


async def request(app, path: str = "/certify") -> tuple[int, dict, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await app(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_requests_beyond_the_limit_are_refused_at_once_with_a_json_503():
    async def scenario():
        release = asyncio.Event()
        app = AdmissionLimit(make_app(release), limit=2)
        held = [asyncio.create_task(request(app)) for _ in range(2)]
        await asyncio.sleep(0.01)
        status, headers, body = await asyncio.wait_for(request(app, "/certify/batch"), 1.0)
        other = asyncio.create_task(request(app, "/models"))  # not the fast path: admitted
        await asyncio.sleep(0.01)
        assert not other.done()
        release.set()
        done = await asyncio.gather(*held, other)
        after = await request(app)  # slots are free again
        return status, headers, body, [d[0] for d in done], after[0], app.in_flight

    status, headers, body, held, after, in_flight = asyncio.run(scenario())
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"] == "overloaded"
    assert "ACCSMOOTH_MAX_IN_FLIGHT=2" in json.loads(body)["detail"]
    assert held == [200, 200, 200] and after == 200 and in_flight == 0
