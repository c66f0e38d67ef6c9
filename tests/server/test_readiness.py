"""Readiness across worker processes: marks in the shared folder, and /readyz reading them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from server import readiness
from server.http.app import create_app
from server.readiness import WorkerReadiness
from tests.server.helpers import settings_for


def a_dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_without_a_folder_one_worker_is_the_whole_server():
    alone = WorkerReadiness(None)
    alone.mark_ready()
    alone.withdraw()
    assert alone.mark is None and alone.expected == 1 and alone.missing() == ""


def test_the_server_is_ready_once_every_worker_has_marked_itself(tmp_path):
    readiness.prepare(tmp_path, 2)
    first = WorkerReadiness(tmp_path)
    second = WorkerReadiness(tmp_path, pid=os.getppid())  # another live process
    assert (
        first.expected == 2
        and first.missing() == "0 of 2 worker processes have their bundles ready"
    )
    first.mark_ready()
    assert first.missing() == "1 of 2 worker processes have their bundles ready"
    second.mark_ready()
    assert first.missing() == "" and second.missing() == "" and first.ready_workers() == 2
    second.withdraw()
    assert first.missing() == "1 of 2 worker processes have their bundles ready"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}.ready", "workers"]


def test_a_dead_workers_mark_does_not_count(tmp_path):
    readiness.prepare(tmp_path, 2)
    WorkerReadiness(tmp_path).mark_ready()
    WorkerReadiness(tmp_path, pid=a_dead_pid()).mark_ready()  # it died without withdrawing
    assert len(list(tmp_path.glob("*.ready"))) == 2
    assert WorkerReadiness(tmp_path).ready_workers() == 1


def test_prepare_removes_an_earlier_servers_marks(tmp_path):
    (tmp_path / f"{os.getppid()}.ready").write_text("stale")
    readiness.prepare(tmp_path, 3)
    assert WorkerReadiness(tmp_path).ready_workers() == 0
    assert (tmp_path / "workers").read_text() == "3\n"


def test_a_folder_not_set_up_by_the_server_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="no readable `workers` file"):
        WorkerReadiness(tmp_path)


def loaded(client: TestClient, timeout: float = 20.0) -> TestClient:
    """`client` once its app's loading task (bundles, then the mark) has finished."""
    deadline = time.monotonic() + timeout
    while not client.app.state.loading.done():
        assert time.monotonic() < deadline, "bundles did not load"
        time.sleep(0.01)
    return client


def test_readyz_waits_for_the_other_workers_and_says_how_many_are_ready(models_dir, tmp_path):
    folder = tmp_path / "ready"
    readiness.prepare(folder, 2)
    mark = folder / f"{os.getpid()}.ready"
    with TestClient(create_app(settings_for(models_dir, ready_dir=folder))) as client:
        loaded(client)
        assert mark.exists()  # this worker has its bundles ready
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"] == "not_ready"
        assert response.json()["detail"] == "1 of 2 worker processes have their bundles ready"
        assert response.json()["models"] == {"tiny": "ready"}
        assert client.get("/v2/health/ready").status_code == 503
        WorkerReadiness(folder, pid=os.getppid()).mark_ready()  # the other worker
        assert client.get("/readyz").status_code == 200
        assert client.get("/v2/health/ready").json() == {"ready": True}
    assert not mark.exists()  # this worker stopped: its mark went with it


def test_a_worker_whose_bundle_failed_never_marks_itself_ready(make_bundle, tmp_path):
    bundle = make_bundle()
    (bundle / "surrogate.onnx").write_bytes(b"not an onnx graph")
    folder = tmp_path / "ready"
    readiness.prepare(folder, 1)
    with TestClient(create_app(settings_for(bundle.parent, ready_dir=folder))) as client:
        loaded(client)
        assert client.app.state.registry.statuses() == {"tiny": "failed"}
        assert client.get("/readyz").status_code == 503
        assert not list(folder.glob("*.ready"))
