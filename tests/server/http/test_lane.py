"""The fast lane of `server.http.protocol` against a real `python -m server`: a raw-body POST
/certify that arrives whole in one read is answered by the protocol itself, with the same
answers, errors, headers and metrics as the ASGI path, keep-alive and `Connection: close` as
HTTP/1.1 says, and answers in request order whichever path each request takes. The ASGI path
is reached with the same request sent in two pieces (head, then body)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from server.http.errors import Overloaded
from server.http.protocol import one_whole_request
from tests.server.helpers import solid, tiny_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("lane")) as process:
        yield process


def request(image: bytes, query: str = "", close: bool = False) -> bytes:
    head = (
        f"POST /certify{query} HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
        f"content-length: {len(image)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + image


def read_answer(sock: socket.socket, buffered: bytearray) -> tuple[int, dict, dict]:
    """One HTTP response from `sock` (bytes beyond it stay in `buffered`)."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection before answering"
        buffered += chunk
    end = buffered.index(b"\r\n\r\n")
    lines = bytes(buffered[:end]).decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(buffered) < end + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-answer"
        buffered += chunk
    body = json.loads(bytes(buffered[end + 4 : end + 4 + length]))
    del buffered[: end + 4 + length]
    return int(lines[0].split()[1]), headers, body


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=60)


def in_pieces(server, data: bytes) -> tuple[int, dict, dict]:
    """`data` sent as its head, then (after a pause) its body: the ASGI path."""
    head, _, body = data.partition(b"\r\n\r\n")
    with connect(server) as sock:
        sock.sendall(head + b"\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(body)
        return read_answer(sock, bytearray())


def whole(server, data: bytes) -> tuple[int, dict, dict]:
    with connect(server) as sock:
        sock.sendall(data)
        return read_answer(sock, bytearray())


def without_latency(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "latency_ms"}


def metric(server, name: str, **labels) -> float:
    with connect(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


@pytest.mark.parametrize(
    ("image", "query", "status"),
    [
        (solid(230), "", 200),  # certified: cat
        (solid(128), "?calibrated=false", 200),  # abstains
        (solid(230), "?model=nope", 404),
        (b"not an image", "", 400),
        (solid(230, size=(9, 9)), "", 422),
    ],
)
def test_the_lane_answers_as_the_asgi_path(server, image, query, status):
    lane = whole(server, request(image, query))
    asgi = in_pieces(server, request(image, query))
    assert lane[0] == asgi[0] == status
    assert without_latency(lane[2]) == without_latency(asgi[2])
    assert list(lane[2]) == list(asgi[2])  # same fields, same order
    for header in ("content-type", "server", "date"):
        assert header in lane[1] and header in asgi[1], header
    assert lane[1]["content-type"] == "application/json"


def test_keep_alive_and_connection_close(server):
    buffered = bytearray()
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(request(solid(230)))
            status, headers, body = read_answer(sock, buffered)
            assert (status, body["label"]) == (200, "cat")
            assert headers.get("connection") != "close"
        sock.sendall(request(solid(20), close=True))
        status, headers, body = read_answer(sock, buffered)
        assert (status, body["label"], headers["connection"]) == (200, "dog", "close")
        assert sock.recv(1) == b""  # and the server closed it


def test_pipelined_requests_are_answered_in_order(server):
    buffered = bytearray()
    with connect(server) as sock:
        # two requests in one read (ASGI path, queued by uvicorn), then one per read sent
        # before the answers are read: whichever path each takes, answers keep their order
        sock.sendall(request(solid(230)) + request(solid(230), "?model=nope"))
        sock.sendall(request(solid(20)))
        time.sleep(0.01)
        sock.sendall(request(b"junk"))
        answers = [read_answer(sock, buffered) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 404, 200, 400]
    assert answers[0][2]["label"] == "cat" and answers[2][2]["label"] == "dog"


def test_lane_answers_are_counted_like_the_routes(server):
    labels = {"endpoint": "/certify", "method": "POST"}
    before_ok = metric(server, "accsmooth_http_requests_total", status="200", **labels)
    before_bad = metric(server, "accsmooth_http_requests_total", status="400", **labels)
    for _ in range(5):
        assert whole(server, request(solid(230)))[0] == 200
    assert whole(server, request(b"junk"))[0] == 400
    assert metric(server, "accsmooth_http_requests_total", status="200", **labels) == before_ok + 5
    assert metric(server, "accsmooth_http_requests_total", status="400", **labels) == before_bad + 1
    assert metric(server, "accsmooth_http_requests_in_flight", endpoint="/certify") == 0


def test_the_lane_shares_the_gates_admission_slots(client):
    lane = client.app.lane
    lane.admission.in_flight = lane.admission.limit  # every slot taken, e.g. by the ASGI path
    try:
        params = {"model": None, "radius": None, "calibrated": True, "resize": False}
        status, body, headers = asyncio.run(lane.respond(params, solid(230)))
    finally:
        lane.admission.in_flight = 0
    assert status == 503 and headers["Retry-After"] == "1"
    assert json.loads(body)["error"] == Overloaded.code


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", (3, b"abc")),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length:  2 \r\n\r\nab", (2, b"ab")),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", None),  # body not all there
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nabGET", None),  # another request behind
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\na", None),
        (b"POST / HTTP/1.1\r\nhost: x\r\n\r\n", None),  # no declared length
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n", None),  # head not complete
    ],
)
def test_one_whole_request(data, expected):
    assert one_whole_request(data) == expected


class Transport:
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self):
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def test_only_a_whole_plain_request_skips_the_asgi_cycle(models_dir):
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    from uvicorn.server import ServerState

    from server.http.app import create_app
    from server.http.protocol import GuardedHttpToolsProtocol, LaneCycle
    from tests.server.helpers import settings_for

    async def scenario():
        app = create_app(settings_for(models_dir))
        async with app.router.lifespan_context(app):
            await app.state.loading
            config = Config(app, lifespan="off")
            config.load()
            state = ServerState()

            def feed(*pieces: bytes):
                proto = GuardedHttpToolsProtocol(
                    config=config,
                    server_state=state,
                    app_state={},
                    _loop=asyncio.get_running_loop(),
                )
                transport = Transport()
                proto.connection_made(transport)
                for piece in pieces:
                    proto.data_received(piece)
                return proto, transport

            whole_one = request(solid(230))
            head, _, body = whole_one.partition(b"\r\n\r\n")
            cases = {
                "whole": feed(whole_one),
                "pieces": feed(head + b"\r\n\r\n", body),
                "multipart": feed(
                    request(solid(230)).replace(b"image/png", b"multipart/form-data")
                ),
            }
            await asyncio.gather(*state.tasks)
            for _ in range(100):  # the ASGI cycles answer on their own tasks too
                if not state.tasks:
                    break
                await asyncio.sleep(0.01)
            return cases

    cases = asyncio.run(scenario())
    proto, transport = cases["whole"]
    assert isinstance(proto.cycle, LaneCycle) and proto.cycle.response_complete
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n") and not transport.closed
    assert json.loads(bytes(transport.written).partition(b"\r\n\r\n")[2])["label"] == "cat"
    proto, transport = cases["pieces"]
    assert isinstance(proto.cycle, RequestResponseCycle)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    proto, transport = cases["multipart"]
    assert isinstance(proto.cycle, RequestResponseCycle)  # not an image/* body: the routes
