"""HAProxy in front of server replicas, for the multi-replica tests: a real load balancer on a
loopback port that health-checks every replica on /readyz (as a Kubernetes readiness probe
gates a pod), and whose runtime API takes a replica out of rotation and puts it back (as
Kubernetes removes a terminating pod from the Service's endpoints).

    with Balancer({"r1": 8101, "r2": 8102}, tmp_path) as lb:
        lb.set_state("r1", "drain")            # no new requests to r1; checks go on
        lb.wait(lambda s: s["r1"]["scur"] == 0)  # its in-flight requests answered
        ...                                    # r1 restarted; its check fails meanwhile
        lb.set_state("r1", "ready")            # back, once its health check passes
        lb.wait_up("r1")

Needs the `haproxy` binary (Debian package `haproxy`; .ci/run installs it).
"""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from loadtests.serve import free_port

HAPROXY = shutil.which("haproxy")
BACKEND = "replicas"
CONFIG = """\
global
    maxconn 512
    stats socket {socket} mode 600 level admin
    log stderr format raw local0 notice

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    log global
    option log-health-checks

frontend certify
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    # a check every 200 ms; one failure takes a replica out, one success puts it back
    default-server inter 200ms fall 1 rise 1
{servers}
"""


class Balancer:
    """`haproxy` on a free loopback port in front of `replicas` ({name: port}); a context
    manager that waits, on entry, until every replica passes its health check."""

    def __init__(self, replicas: dict[str, int], folder: Path, timeout: float = 60.0):
        self.replicas = replicas
        self.folder = folder
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket_path = folder / "haproxy.sock"
        self.log_path = folder / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check" for name, port in self.replicas.items()
        )
        return CONFIG.format(
            socket=self.socket_path, port=self.port, backend=BACKEND, servers=servers
        )

    def __enter__(self) -> Balancer:
        if HAPROXY is None:
            raise FileNotFoundError("haproxy is not installed (Debian: apt-get install haproxy)")
        path = self.folder / "haproxy.cfg"
        path.write_text(self.config())
        check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log_path.open("wb") as log:
            # -db: stay in the foreground, so that this handle is haproxy itself
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.wait(lambda s: all(s[n]["status"] == "UP" for n in self.replicas))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def command(self, line: str) -> str:
        """One command of haproxy's runtime API; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict]:
        """`show stat` of the backend's servers: {name: {"status": "UP", "scur": 0, ...}}."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(line for line in text.splitlines() if line)
        return {
            row["svname"]: {"status": row["status"], "scur": int(row["scur"] or 0)}
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] in self.replicas
        }

    def set_state(self, name: str, state: str) -> None:
        """`drain`: no new requests, in-flight ones go on, health checks go on; `ready`: back
        in rotation as soon as its health check passes. (Not `maint`: it stops the checks,
        and a server leaving it counts as UP before any check has passed.)"""
        answer = self.command(f"set server {BACKEND}/{name} state {state}")
        assert answer.strip() == "", answer

    def wait(self, condition: Callable[[dict], bool], what: str = "") -> dict:
        """Poll `servers()` until `condition` holds; the last reading."""
        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log_path.read_text()[-2000:]}")
            try:
                servers = self.servers()
            except OSError:  # the socket is not there yet
                servers = None
            if servers is not None and condition(servers):
                return servers
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy: {what or condition} not reached: {servers}")
            time.sleep(0.05)

    def wait_up(self, name: str) -> None:
        self.wait(lambda s: s[name]["status"] == "UP", f"{name} UP")
