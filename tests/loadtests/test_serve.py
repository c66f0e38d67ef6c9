"""`loadtests.serve.ServerProcess` leaves no server behind: not when its parent is killed
(SIGKILL, as a test run cut off by a timeout is), not when it is stopped, workers included.
Real `python -m server` subprocesses on a tiny placeholder bundle; the tests wait for processes
to go, they time nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from loadtests.serve import REPO, ServerProcess
from server.placeholder import write_bundle
from tests.server.helpers import CALIBRATION, CLASSES, SHAPE

ENV = {"ACCSMOOTH_PROVIDERS": "CPUExecutionProvider", "ACCSMOOTH_INTRA_OP_THREADS": "1"}

PARENT = """
import sys, time
from loadtests.serve import ServerProcess
server = ServerProcess(sys.argv[1], env={env!r}).start()
print(server.process.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    write_bundle(folder / "tiny", classes=CLASSES, shape=SHAPE, calibration=CALIBRATION)
    return folder


def gone(pid: int, timeout: float = 60.0) -> bool:
    """Waits until `pid` has exited (or is a zombie nobody reaped yet); False if it still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_server_does_not_outlive_a_parent_killed_with_sigkill(models):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(env=ENV), str(models)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server_pid = int(parent.stdout.readline())
        assert psutil.Process(server_pid).is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        survived = not gone(server_pid)
    finally:
        parent.kill()
        parent.wait()
    if survived:
        psutil.Process(server_pid).kill()
    assert not survived, "the server kept running after its parent was killed"


@pytest.mark.slow  # about 2 s: a two-worker server process started and stopped
def test_stop_ends_the_server_and_its_workers(models):
    server = ServerProcess(models, env=ENV, workers=2).start()
    family = [p.pid for p in server.processes()]
    assert len(family) >= 3  # the supervisor and two workers
    server.stop()
    assert all(gone(pid, timeout=10.0) for pid in family)
