"""Start `python -m server` as a real subprocess for load tests, benchmarks and the shutdown
test; watch its memory; stop it.

    with ServerProcess(models_dir="models", env={"ACCSMOOTH_MAX_QUEUE": "256"}) as server:
        print(server.url, server.rss_mb())

The server listens on a free loopback port (never 8000), logs to a file, and is ready when
/readyz answers 200. Memory is the resident set of the server process plus its children
(uvicorn workers, audit processes), read with psutil.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def single_bundle_dir(bundle: Path) -> Path:
    """A fresh temporary models folder that holds only `bundle` (as a symlink), so a server
    started on it loads, warms up and holds in memory that bundle alone."""
    folder = Path(tempfile.mkdtemp(prefix="accsmooth-models-"))
    (folder / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
    return folder


class ServerProcess:
    """A `python -m server` subprocess on a free port; a context manager."""

    def __init__(
        self,
        models_dir: str | os.PathLike = "models",
        *,
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        ready_timeout: float = 120.0,
    ):
        self.models_dir = Path(models_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.extra_env = env or {}
        self.ready_timeout = ready_timeout
        self.log_path = Path(
            log_path or tempfile.mkstemp(prefix="accsmooth-server-", suffix=".log")[1]
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        env = os.environ | {"ACCSMOOTH_LOG_LEVEL": "warning"} | self.extra_env
        args = [
            sys.executable,
            "-m",
            "server",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--models-dir",
            str(self.models_dir),
        ]
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if _status(f"{self.url}/readyz") == 200:
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not ready after {self.ready_timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def processes(self) -> list[psutil.Process]:
        """The server process and every descendant still alive."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mb(self) -> float:
        """Resident memory of the server and its children, MiB."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total / 2**20

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server and its live children."""
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
