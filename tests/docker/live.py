"""Real processes for the ops tests and `make fuzz`: the server on a bundle, and Prometheus.

Each is a context manager that starts the program on a free loopback port, waits until it
answers, and on exit stops it (SIGTERM, then SIGKILL after a grace period) and keeps its log.

    with live_server(models_dir, workers=2) as server:
        httpx.get(server.url + "/readyz")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDER = "placeholder-untrained"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_placeholder(models_dir: Path) -> Path:
    """A CIFAR-sized (3x32x32, 10 classes) untrained bundle, as `make run` writes it."""
    folder = models_dir / PLACEHOLDER
    subprocess.run(
        [sys.executable, "-m", "server.placeholder", str(folder)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return folder


def status_of(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@dataclass
class Process:
    """A started program: its URL, its Popen handle and the file its output goes to."""

    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _wait(proc: Process, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"exited with {proc.process.returncode}:\n{proc.log_text()[-3000:]}")
        if status_of(proc.url + path, timeout=1.0) == 200:
            return
        time.sleep(0.2)
    tail = proc.log_text()[-3000:]
    raise TimeoutError(f"{proc.url}{path} not 200 after {timeout:.0f} s:\n{tail}")


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _run(cmd: list[str], env: dict, log: Path, url: str, ready: str, timeout: float):
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc = Process(url, popen, log)
    try:
        _wait(proc, ready, timeout)
        yield proc
    finally:
        _stop(popen)


@contextlib.contextmanager
def live_server(
    models_dir: Path, log: Path, *, workers: int = 1, env: dict | None = None, timeout=120.0
) -> Iterator[Process]:
    """`python -m server` on `models_dir`, ready (every bundle warmed up) when entered."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ACCSMOOTH_")}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # `python -m server` makes its own
    full_env |= {"ACCSMOOTH_PROVIDERS": "CPUExecutionProvider"} | (env or {})
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--models-dir",
        str(models_dir),
    ]
    with _run(cmd, full_env, log, f"http://127.0.0.1:{port}", "/readyz", timeout) as proc:
        yield proc


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@contextlib.contextmanager
def live_prometheus(config: Path, data_dir: Path, log: Path, timeout=60.0) -> Iterator[Process]:
    """The `prometheus` binary on `config`, ready (`/-/ready`) when entered."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (Debian: apt-get install prometheus)")
    port = free_port()
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with _run(cmd, dict(os.environ), log, f"http://127.0.0.1:{port}", "/-/ready", timeout) as p:
        yield p
