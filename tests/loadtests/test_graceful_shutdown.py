"""SIGTERM under load, against a real `python -m server` subprocess: every request the server
had accepted is answered (0 lost), new connections are refused while it drains, and it ends with a
clean lifespan shutdown.

Load: 8 keep-alive /certify clients, plus 3 Monte-Carlo audits (1 computing, 2 queued) that
outlive the signal by a second or more, so draining is really exercised. A request counts as
accepted when it was sent before the signal: uvicorn only starts shutting down on its next
tick, so the server has read every one of those by then.
"""

from __future__ import annotations

import http.client
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
AUDIT_N = 40_000  # ~0.5-2 s each on 2 cores: the audits outlive the signal


class Client(threading.Thread):
    """Sends /certify requests back to back on a keep-alive connection, reconnecting after an
    error, until stopped; records (sent_at, outcome) for each attempt."""

    def __init__(self, port: int, path: str, body: bytes, stop: threading.Event, once=False):
        super().__init__(daemon=True)
        self.port, self.path, self.body, self.stop, self.once = port, path, body, stop, once
        self.records: list[tuple[float, str, int | None]] = []

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            sent = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, {"content-type": "image/png"})
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and b'"certified_radius"' in body
                self.records.append((sent, "answered" if ok else "bad", response.status))
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                self.records.append((sent, "refused", None))
                conn = None
                time.sleep(0.01)
            except (http.client.HTTPException, OSError):
                self.records.append((sent, "dropped", None))
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


def test_sigterm_under_load_answers_every_accepted_request_and_refuses_new_ones(server):
    image = solid(230)
    stop = threading.Event()
    audit_path = f"/certify/sampled?n0=100&n={AUDIT_N}&batch_size=64&seed=1"
    audits = [Client(server.port, audit_path, image, stop, once=True) for _ in range(AUDITS)]
    clients = [Client(server.port, "/certify", image, stop) for _ in range(CLIENTS)]
    for thread in audits + clients:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(len(c.records) for c in clients) < 100 or running_audits(server.url) < 1:
        assert time.monotonic() < deadline, "the load never got going"
        time.sleep(0.05)
    server.signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.5)
    draining = server.process.poll() is None  # audits still computing
    refused_while_draining = refused(server.port)
    time.sleep(0.5)
    stop.set()
    exit_code = server.process.wait(timeout=60)
    for thread in audits + clients:
        thread.join(timeout=60)

    fast = [r for c in clients for r in c.records]
    before = [r for r in fast if r[0] < signalled]
    lost = [r for r in before if r[1] != "answered"]
    assert len(before) > 50, "too little load before the signal to show anything"
    assert lost == [], f"{len(lost)} of {len(before)} accepted /certify requests lost: {lost[:5]}"
    audit_outcomes = [c.records for c in audits]
    assert all(r and r[0][1] == "answered" for r in audit_outcomes), audit_outcomes
    assert draining and refused_while_draining, "new connections must be refused while draining"
    after = [r for r in fast if r[0] >= signalled]
    assert not [r for r in after if r[1] == "bad"], "an answer after the signal was not a 200"
    assert any(r[1] == "refused" for r in after), "no new request was refused after the signal"
    # uvicorn re-raises the signal once it has shut down cleanly: -SIGTERM is the normal end
    assert exit_code in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()
    outcomes = {k: sum(r[1] == k for r in after) for k in ("answered", "refused", "dropped")}
    print(f"\nbefore SIGTERM: {len(before)} sent, {len(lost)} lost; {AUDITS} audits answered;"
          f" after SIGTERM: {outcomes}")  # fmt: skip
