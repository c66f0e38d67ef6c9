"""SIGTERM under load, against a real `python -m server` subprocess: every fast-path request the
server had accepted is answered (0 lost), new connections are refused while it drains, audits
still running when the grace period ends are answered with a JSON 503, and it ends with a clean
lifespan shutdown.

Load: 8 keep-alive /certify clients, plus 3 Monte-Carlo audits (1 computing, 2 queued) of a
billion samples each: no machine finishes one, so the drain lasts at least the grace period
(ACCSMOOTH_GRACEFUL_TIMEOUT_S, a few seconds) however fast the machine is, and ends once the
server cancels them. A request counts as accepted when it was sent before the signal: uvicorn
only starts shutting down on its next tick, so the server has read every one of those by then.
Nothing here is timed: the test polls for what it waits for.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from loadtests.audits import running_audits
from loadtests.serve import ServerProcess
from server.placeholder import write_bundle
from tests.server.helpers import CALIBRATION, CLASSES, SHAPE, solid

CLIENTS = 8
AUDITS = 3
AUDIT_N = 1_000_000_000  # far more than any machine samples within the grace period
GRACE_S = 3


class Client(threading.Thread):
    """Sends /certify requests back to back on a keep-alive connection, reconnecting after an
    error, until stopped; records (sent_at, outcome, status, body) for each attempt, sent_at
    being when the whole request was written."""

    def __init__(self, port: int, path: str, body: bytes, stop: threading.Event, once=False):
        super().__init__(daemon=True)
        self.port, self.path, self.body, self.stop, self.once = port, path, body, stop, once
        self.records: list[tuple[float, str, int | None, bytes]] = []

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            sent = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, {"content-type": "image/png"})
                sent = time.monotonic()  # the request is in the socket: "accepted" from here
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and b'"certified_radius"' in body
                self.records.append((sent, "answered" if ok else "bad", response.status, body))
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                self.records.append((sent, "refused", None, b""))
                conn = None
                time.sleep(0.01)
            except (http.client.HTTPException, OSError):
                self.records.append((sent, "dropped", None, b""))
                conn = None
            if self.once:
                return


@pytest.fixture
def server(tmp_path: Path):
    write_bundle(
        tmp_path / "models" / "tiny", classes=CLASSES, shape=SHAPE, calibration=CALIBRATION
    )
    env = {
        "ACCSMOOTH_PROVIDERS": "CPUExecutionProvider",
        "ACCSMOOTH_INTRA_OP_THREADS": "1",
        "ACCSMOOTH_MAX_SAMPLES": str(AUDIT_N),
        "ACCSMOOTH_GRACEFUL_TIMEOUT_S": str(GRACE_S),
        "ACCSMOOTH_LOG_LEVEL": "info",  # to read "Application shutdown complete"
    }
    process = ServerProcess(tmp_path / "models", env=env, log_path=tmp_path / "server.log")
    with process:
        yield process


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def refused_while_alive(server) -> bool:
    """Poll until the process ends: was a new connection refused while it still lived?"""
    while server.process.poll() is None:
        if refused(server.port) and server.process.poll() is None:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow  # about 4 s: a server process under load through its grace period
def test_sigterm_under_load_answers_every_accepted_request_and_refuses_new_ones(server):
    image = solid(230)
    stop = threading.Event()
    audit_path = f"/certify/sampled?n0=100&n={AUDIT_N}&batch_size=64&seed=1"
    audits = [Client(server.port, audit_path, image, stop, once=True) for _ in range(AUDITS)]
    clients = [Client(server.port, "/certify", image, stop) for _ in range(CLIENTS)]
    for thread in audits + clients:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(len(c.records) for c in clients) < 100 or running_audits(server.url) < 1:
        assert time.monotonic() < deadline, "the load never got going"
        time.sleep(0.05)
    assert not any(a.records for a in audits), "an audit of a billion samples ended early"
    server.signal(signal.SIGTERM)
    signalled = time.monotonic()
    draining_refused = refused_while_alive(server)
    exit_code = server.process.wait(timeout=120)
    stop.set()
    for thread in audits + clients:
        thread.join(timeout=60)

    fast = [r for c in clients for r in c.records]
    before = [r for r in fast if r[0] < signalled]
    lost = [r[:3] for r in before if r[1] != "answered"]
    assert len(before) > 50, "too little load before the signal to show anything"
    assert lost == [], f"{len(lost)} of {len(before)} accepted /certify requests lost: {lost[:5]}"
    assert draining_refused, "new connections must be refused while draining"
    for records in (a.records for a in audits):  # each audit answered, by a JSON 503
        assert len(records) == 1 and records[0][2] == 503, records
        body = json.loads(records[0][3])
        assert body["error"] == "shutting_down" and "grace period" in body["detail"], body
    after = [r for r in fast if r[0] >= signalled]
    assert not [r for r in after if r[1] == "bad"], "an answer after the signal was not a 200"
    assert any(r[1] == "refused" for r in after), "no new request was refused after the signal"
    # uvicorn re-raises the signal once it has shut down cleanly: -SIGTERM is the normal end
    assert exit_code in (0, -signal.SIGTERM), server.log()
    log = server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log, log
    outcomes = {k: sum(r[1] == k for r in after) for k in ("answered", "refused", "dropped")}
    print(
        f"\nbefore SIGTERM: {len(before)} sent, {len(lost)} lost; {AUDITS} audits answered 503;"
        f" after SIGTERM: {outcomes}"
    )
