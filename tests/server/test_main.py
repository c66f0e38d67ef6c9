"""`python -m server` as a real uvicorn process: two workers, both paths, whole metrics."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.__main__ import (
    WORKER_HEALTHCHECK_SECONDS,
    cgroup_cpu_limit,
    main,
    parse_args,
    prepare_multiprocess_dir,
    prepare_ready_dir,
    supervisor_options,
    usable_cpus,
)
from server.readiness import WorkerReadiness
from tests.server.helpers import solid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certify_count(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "accsmooth_http_requests_total"
        and s.labels == {"endpoint": "/certify", "method": "POST", "status": "200"}
    )


@pytest.fixture
def server(models_dir: Path, tmp_path: Path):
    """A 2-worker server on a free port, with its multiprocess metrics folder."""
    port = free_port()
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_99999.db").write_bytes(b"stale")  # a previous run's leftovers
    env = os.environ | {
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "ACCSMOOTH_PROVIDERS": "CPUExecutionProvider",
        "ACCSMOOTH_INTRA_OP_THREADS": "1",
    }
    workers = 2
    args = ["--port", str(port), "--workers", str(workers), "--models-dir", str(models_dir)]
    # /readyz answers from whichever worker takes the connection, and is 200 only once every
    # worker has its bundles ready (server.readiness): on a busy machine a request might
    # otherwise land on one still loading
    bundles = len(list(models_dir.glob("*/manifest.json")))
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("server did not become ready:\n" + (tmp_path / "server.log").read_text())
        loaded = (tmp_path / "server.log").read_text().count(" ready: surrogate on ")
        assert loaded == workers * bundles  # the first 200 came once both workers had loaded
        yield base, prom
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow  # about 3 s: a two-worker server process
def test_two_workers_serve_both_paths_and_every_scrape_sees_all_requests(server):
    base, prom = server
    n = 20
    for _ in range(n):  # a new connection each time, so both workers get traffic
        with httpx.Client(base_url=base, headers={"connection": "close"}) as c:
            r = c.post("/certify", content=solid(230), headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.json()["label"] == "cat"
    sampled = httpx.post(
        f"{base}/certify/sampled",
        params={"n": 1000, "seed": 1},
        content=solid(230),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert sampled.status_code == 200, sampled.text
    assert sum(sampled.json()["counts"]) == 1000 and sampled.json()["label"] == "cat"
    counts = []
    for _ in range(10):
        with httpx.Client(base_url=base, headers={"connection": "close"}) as c:
            counts.append(certify_count(c.get("/metrics").text))
    assert counts == [n] * 10  # whichever worker answers, the scrape is whole
    pids = {p.stem.rsplit("_", 1)[-1] for p in prom.glob("*.db")}
    assert len(pids) >= 2 and "99999" not in pids  # two workers wrote; stale files removed


def test_cli_options_have_defaults_and_parse():
    args = parse_args(["--port", "9000", "--workers", "3", "--models-dir", "m"])
    assert (args.port, args.workers, args.models_dir, args.host) == (
        9000,
        3,
        Path("m"),
        "127.0.0.1",
    )


def test_several_workers_get_a_fresh_metrics_folder(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored after the test
    assert prepare_multiprocess_dir(1) is None
    folder = prepare_multiprocess_dir(2)
    try:
        assert folder and os.environ["PROMETHEUS_MULTIPROC_DIR"] == folder
        assert Path(folder).is_dir() and not any(Path(folder).iterdir())
    finally:
        os.rmdir(folder)


def test_several_workers_get_a_fresh_readiness_folder(monkeypatch):
    monkeypatch.setenv("ACCSMOOTH_READY_DIR", "/an/earlier/servers/folder")  # restored after
    assert prepare_ready_dir(1) is None and "ACCSMOOTH_READY_DIR" not in os.environ
    folder = prepare_ready_dir(3)
    try:
        assert folder and os.environ["ACCSMOOTH_READY_DIR"] == folder
        assert WorkerReadiness(Path(folder)).missing() == (
            "0 of 3 worker processes have their bundles ready"
        )
    finally:
        shutil.rmtree(folder)


def test_workers_get_a_minute_to_answer_uvicorns_health_check(monkeypatch):
    """uvicorn's default 5 s killed and respawned workers for ever on a busy host (found by
    tests/docker's integration test with every process 8 s slower: 10 deaths a minute)."""
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "ACCSMOOTH_READY_DIR"):
        monkeypatch.delenv(variable, raising=False)
    main(["--port", str(free_port()), "--workers", "2"])
    # the folders it made for its workers are gone, and so are the variables naming them
    assert "ACCSMOOTH_READY_DIR" not in os.environ and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        assert seen["timeout_worker_healthcheck"] == WORKER_HEALTHCHECK_SECONDS >= 30
    else:  # uvicorn < 0.37 has no such option (and a fixed 5 s): pass nothing it would refuse
        assert "timeout_worker_healthcheck" not in seen


def test_supervisor_options_leave_out_what_uvicorn_does_not_know():
    assert supervisor_options({"host": None}) == {}
    assert supervisor_options({"timeout_worker_healthcheck": None}) == {
        "timeout_worker_healthcheck": WORKER_HEALTHCHECK_SECONDS
    }


def test_workers_default_to_one_per_usable_cpu(monkeypatch):
    monkeypatch.delenv("ACCSMOOTH_WORKERS", raising=False)
    assert parse_args([]).workers == usable_cpus() >= 1
    assert parse_args(["--workers", "auto"]).workers == usable_cpus()
    monkeypatch.setenv("ACCSMOOTH_WORKERS", "3")
    assert parse_args([]).workers == 3


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_worker_count_that_is_not_positive_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--workers", value])
    assert "number of workers >= 1, or auto" in capsys.readouterr().err


def test_a_container_cpu_quota_caps_the_workers(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    assert usable_cpus(v2) == len(os.sched_getaffinity(0))
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker run --cpus 1.5
    assert cgroup_cpu_limit(v2) == 1.5
    assert usable_cpus(v2) == 1
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one worker
    assert usable_cpus(v2) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1: no quota
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cgroup_cpu_limit(v1) == 4.0
    assert usable_cpus(v1) == min(len(os.sched_getaffinity(0)), 4)
    assert cgroup_cpu_limit(tmp_path / "none") is None  # no cgroup files: no cap
