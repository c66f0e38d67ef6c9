"""docker/healthcheck.py, the images' HEALTHCHECK, run as the container runs it: healthy on
a 200 from /readyz only (503 while loading, nothing listening, a hung server are unhealthy)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from tests.docker.dockerfiles import REPO
from tests.docker.live import free_port


class Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b'{"status":"ready"}' if self.status == 200 else b'{"error":"not_ready"}'
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    """A /readyz stub on a free port; set `stub.RequestHandlerClass.status`."""
    handler = type("Handler", (Readyz,), {})
    server = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def healthcheck(port: int) -> subprocess.CompletedProcess:
    env = {"ACCSMOOTH_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "docker/healthcheck.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthy_when_readyz_answers_200(stub):
    result = healthcheck(stub.server_address[1])
    assert result.returncode == 0, result.stdout
    assert ": 200" in result.stdout


def test_unhealthy_while_readyz_answers_503(stub):
    stub.RequestHandlerClass.status = 503
    result = healthcheck(stub.server_address[1])
    assert result.returncode == 1
    assert "503" in result.stdout and "not_ready" in result.stdout


def test_unhealthy_when_nothing_listens():
    result = healthcheck(free_port())
    assert result.returncode == 1
    assert "refused" in result.stdout.lower()
