"""Start `python -m server` as a real subprocess for load tests, benchmarks and the shutdown
test; watch its memory; stop it.

    with ServerProcess(models_dir="models", env={"ACCSMOOTH_MAX_QUEUE": "256"}) as server:
        print(server.url, server.rss_mb())

The server listens on a free loopback port (never 8000), logs to a file, and is ready when
/readyz answers 200. Memory is the resident set of the server process plus its children
(uvicorn workers, audit processes), read with psutil.

A server must never outlive what started it: `stop()` kills the whole process tree, a start
that fails or is interrupted stops what it started, and on Linux the server gets SIGTERM from
the kernel when its parent dies without cleaning up (a test run killed by a timeout or SIGKILL),
instead of being left to init and serving, or spinning, for hours.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
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

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies


def _die_with_parent(parent: int) -> None:
    """Runs in the child before exec: ask Linux for SIGTERM when the parent dies, and exit now
    if it already has (it may die between fork and the prctl call)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


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


def server_settings(env: dict[str, str] | None = None, code_dir=REPO) -> dict:
    """What a server started from `code_dir` with this environment (plus `env`) runs with, as
    `python -m server.settings` prints it: `{"settings", "fast_runtime", "sampled_runtime"}`."""
    done = subprocess.run(
        [sys.executable, "-m", "server.settings"],
        cwd=code_dir,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(
            f"python -m server.settings exited with {done.returncode}:\n{done.stderr}"
        )
    return json.loads(done.stdout)


def single_bundle_dir(bundle: Path) -> Path:
    """A fresh temporary models folder that holds only `bundle` (as a symlink), so a server
    started on it loads, warms up and holds in memory that bundle alone."""
    folder = Path(tempfile.mkdtemp(prefix="accsmooth-models-"))
    (folder / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
    return folder


def process_tree(pid: int) -> list[psutil.Process]:
    """Process `pid` and every descendant still alive (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    """Resident memory of process `pid` and its live descendants, MiB."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` and its live descendants."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class ServerProcess:
    """A `python -m server` subprocess on a free port; a context manager."""

    def __init__(
        self,
        models_dir: str | os.PathLike = "models",
        *,
        env: dict[str, str] | None = None,
        workers: int | None = 1,  # None: the server's own default
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        ready_timeout: float = 120.0,
        code_dir: str | os.PathLike = REPO,
    ):
        self.models_dir = Path(models_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.extra_env = env or {}
        self.ready_timeout = ready_timeout
        self.code_dir = Path(code_dir)  # the checkout whose `server` package runs
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
            *(["--workers", str(self.workers)] if self.workers is not None else []),
            "--models-dir",
            str(self.models_dir),
        ]
        parent = os.getpid()
        preexec = (lambda: _die_with_parent(parent)) if sys.platform == "linux" else None
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                args,
                cwd=self.code_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=preexec,
            )
        try:
            self.wait_ready()
        except BaseException:  # not ready, or interrupted (Ctrl-C, a test timeout): no orphan
            self.stop(timeout=5.0)
            raise
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
        return process_tree(self.process.pid)

    def rss_mb(self) -> float:
        """Resident memory of the server and its children, MiB."""
        return tree_rss_mb(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server and its live children."""
        return tree_cpu_seconds(self.process.pid)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; then SIGKILL for any of its children still
        alive (uvicorn workers of a server that was killed); returns the exit code."""
        if self.process is None:
            return 0
        family = self.processes()[1:]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
