"""Slow, oversized and vanishing clients against a real `python -m server` (uvicorn with
`server.http.protocol`): each gets a JSON 4xx or is counted as 499, the connection closes, and
nothing is logged as a traceback. Deadlines are set to 1 s here; the test waits for what the server
does, it never times the server."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.server.helpers import solid, tiny_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {
        "ACCSMOOTH_HEADER_TIMEOUT_S": "1",
        "ACCSMOOTH_BODY_TIMEOUT_S": "1",
        "ACCSMOOTH_MAX_HEADER_BYTES": "8192",
        "ACCSMOOTH_MAX_SAMPLES": str(10**12),
        "ACCSMOOTH_LOG_LEVEL": "info",
    }
    with tiny_server(tmp_path_factory.mktemp("connections"), **env) as process:
        yield process


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=60)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def metric(server, name: str, **labels) -> float:
    with connect(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        text = read_all(sock).decode()
    total = 0.0
    for line in text.splitlines():
        labelled = line.startswith(name + "{")
        if (labelled and all(f'{k}="{v}"' in line for k, v in labels.items())) or (
            line.startswith(name + " ") and not labels
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_headers_sent_too_slowly_get_408_and_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(b"POST /certify HTTP/1.1\r\nhost: t\r\n")  # and never the rest
        status, headers, body = parse(read_all(sock))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"] == "request_timeout" and "ACCSMOOTH_HEADER_TIMEOUT_S" in body["detail"]


def test_headers_over_the_size_limit_get_431(server):
    with connect(server) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n")
        status, _, body = parse(read_all(sock))
    assert status == 431
    assert body["error"] == "headers_too_large" and "ACCSMOOTH_MAX_HEADER_BYTES" in body["detail"]


def test_a_connection_that_never_sends_a_byte_is_closed(server):
    with connect(server) as sock:
        assert read_all(sock) == b""


def test_a_body_sent_too_slowly_gets_408_and_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(
            b"POST /certify HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
            b"content-length: 1000\r\n\r\n" + solid(230)[:10]
        )
        status, headers, body = parse(read_all(sock))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"] == "request_timeout" and "ACCSMOOTH_BODY_TIMEOUT_S" in body["detail"]


def test_a_client_gone_mid_upload_is_counted_499_and_logged_in_one_line(server):
    before = metric(server, "accsmooth_http_requests_total", endpoint="/certify", status="499")
    with connect(server) as sock:
        sock.sendall(
            b"POST /certify HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
            b"content-length: 1000\r\n\r\n" + solid(230)[:10]
        )
    wait_for(
        lambda: (
            metric(server, "accsmooth_http_requests_total", endpoint="/certify", status="499")
            > before
        ),
        "the disconnect was not counted as 499",
    )
    assert metric(server, "accsmooth_http_requests_total", status="500") == 0
    log = server.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert re.search(r"POST /certify -> 499 client_disconnected", log)


def test_an_audit_is_cancelled_when_its_client_disconnects(server):
    image = solid(230)
    with connect(server) as sock:
        sock.sendall(
            b"POST /certify/sampled?n0=10&n=1000000000000&batch_size=16&seed=1 HTTP/1.1\r\n"
            b"host: t\r\ncontent-type: image/png\r\n"
            + f"content-length: {len(image)}\r\n\r\n".encode()
            + image
        )
        wait_for(lambda: metric(server, "accsmooth_sampled_running") >= 1, "the audit never ran")
    wait_for(
        lambda: (
            metric(server, "accsmooth_sampled_running") == 0
            and metric(server, "accsmooth_sampled_queue_depth") == 0
        ),
        "the audit went on after its client had gone",
    )
    assert (
        metric(server, "accsmooth_http_requests_total", endpoint="/certify/sampled", status="499")
        == 1
    )


@pytest.mark.slow  # about 4 s: it watches the server's CPU time for a few seconds
def test_the_server_burns_no_cpu_once_slow_and_vanishing_clients_are_gone(server):
    """An idle server after every kind of bad client: its CPU time (psutil, process and
    children) barely moves over an idle second, so no timer, watchdog or read loop spins."""
    image = solid(230)
    abandoned = [connect(server) for _ in range(4)]
    abandoned[0].sendall(b"POST /certify HTTP/1.1\r\nhost: t\r\n")  # slow headers
    abandoned[1].sendall(  # slow body
        b"POST /certify HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
        b"content-length: 1000\r\n\r\n" + image[:10]
    )
    abandoned[2].sendall(  # a whole request, then a partial second one on the same connection
        b"POST /certify HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
        + f"content-length: {len(image)}\r\n\r\n".encode()
        + image
        + b"POST /certify HTTP/1.1\r\n"
    )  # abandoned[3] never sends a byte
    for sock in abandoned[1:3]:  # two of them vanish before the server times them out
        sock.close()
    for sock in (abandoned[0], abandoned[3]):
        with sock:
            read_all(sock)  # the server closes them at its header deadline
    in_flight = "accsmooth_http_requests_in_flight"  # the scrape itself is the one left
    wait_for(lambda: metric(server, in_flight) == 1, "requests still in flight")
    time.sleep(1.5)  # past every deadline (1 s here): nothing is pending any more
    before = server.cpu_seconds()
    time.sleep(1.0)
    used = server.cpu_seconds() - before
    assert used < 0.1, f"the idle server used {used:.3f} s of CPU in 1 s"
