"""Executors: a process pool and Ray give the counts of one process, bit for bit, for the same
seeds; a run killed midway resumes from the chunks it finished; the CLI's options pick the
executor.

The smoke pipeline (`smoke_run`) ran on the default pool of every core; the references here
run in one process (`LocalExecutor(1)`), as the exporter did before executors. Ray tests share
one local Ray of two workers (about 10 s to start) and fail, not skip, under CI without Ray.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from exporter import __main__ as cli
from exporter import data, targets
from exporter.certify_images import certify_all, images_digest
from exporter.executor import LocalExecutor, cores, using
from tests.exporter.conftest import ROOT, SMOKE

IMAGES = 25  # three CERTIFY chunks, the last one short


def _copy_work(src, dst):
    dst.mkdir()
    for name in ("data.npz", "base.pt", "base.onnx", "base.onnx.json"):
        shutil.copy2(src / name, dst / name)
    return dst


def _certify(cfg, work, out_dir):
    images = data.load(work).calib.images[:IMAGES]
    kw = dict(batch_size=cfg.calibrate.batch_size, seed=cfg.calibrate.seed, desc="mc")
    return certify_all(work / "base.onnx", images, cfg.bundle, out_dir=out_dir, **kw)


def _assert_same_counts(a, b):
    assert np.array_equal(a.counts0, b.counts0)
    assert np.array_equal(a.counts, b.counts)
    assert np.array_equal(a.predicted, b.predicted) and np.array_equal(a.radius, b.radius)


@pytest.fixture(scope="module")
def one_process(smoke_run, tmp_path_factory):
    """Targets counts and CERTIFY results computed in one process, the reference."""
    cfg, work, _ = smoke_run
    base = tmp_path_factory.mktemp("one-process")
    with using(LocalExecutor(1)):
        counts = np.load(targets.run(cfg, _copy_work(work, base / "work")))
        mc = _certify(cfg, work, base / "mc")
    return counts, mc


def test_onnxruntime_gives_the_same_outputs_on_one_thread_as_on_every_core(smoke_run):
    _, work, _ = smoke_run
    every_core = OnnxPredictor(make_session(work / "base.onnx"))
    one = OnnxPredictor(make_session(work / "base.onnx", RuntimeOptions(intra_op_threads=1)))
    batch = np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32)
    assert np.array_equal(every_core(batch), one(batch))


def test_the_process_pool_gives_the_counts_of_one_process(smoke_run, one_process, tmp_path):
    cfg, work, _ = smoke_run
    counts, mc = one_process
    assert np.array_equal(np.load(work / "targets" / "counts.npy"), counts)  # the smoke run's pool
    with LocalExecutor(2) as pool, using(pool):
        _assert_same_counts(_certify(cfg, work, tmp_path / "mc"), mc)


def test_a_certify_run_resumes_from_its_finished_chunks(smoke_run, one_process, tmp_path):
    cfg, work, _ = smoke_run
    _, mc = one_process
    first = _certify(cfg, work, tmp_path / "mc")
    chunks = sorted((tmp_path / "mc").glob("chunk_*.npz"))
    assert [p.name for p in chunks] == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    chunks[1].unlink()  # "killed" with chunk 1 unfinished and a half-written temporary file
    (tmp_path / "mc" / "chunk_00001.tmp.npz").write_bytes(b"PK\x03\x04 half")
    kept = {p.name: p.stat().st_mtime_ns for p in (chunks[0], chunks[2])}
    with LocalExecutor(2) as pool, using(pool):
        resumed = _certify(cfg, work, tmp_path / "mc")
    assert {name: (tmp_path / "mc" / name).stat().st_mtime_ns for name in kept} == kept
    _assert_same_counts(resumed, mc)
    _assert_same_counts(resumed, first)
    assert np.array_equal(resumed.seconds[:10], first.seconds[:10])  # read back, not recomputed


def test_a_grown_image_set_certifies_only_its_new_chunks(smoke_run, one_process, tmp_path):
    """More images at the end reuse the finished chunks; a chunk whose images changed is
    certified again (each chunk file carries the sha256 of its images)."""
    cfg, work, _ = smoke_run
    _, mc = one_process
    images = data.load(work).calib.images
    kw = dict(batch_size=cfg.calibrate.batch_size, seed=cfg.calibrate.seed, desc="mc")
    out = tmp_path / "mc"
    with using(LocalExecutor(1)):
        certify_all(work / "base.onnx", images[:20], cfg.bundle, out_dir=out, **kw)
        kept, stale = ((out / f"chunk_0000{i}.npz").stat().st_mtime_ns for i in (0, 1))
        changed = images[:IMAGES].copy()
        changed[15] = 255 - changed[15]  # chunk 1 now holds another image
        grown = certify_all(work / "base.onnx", changed, cfg.bundle, out_dir=out, **kw)
    assert (out / "chunk_00000.npz").stat().st_mtime_ns == kept
    assert np.array_equal(grown.counts[:10], mc.counts[:10])
    assert np.array_equal(grown.counts[20:], mc.counts[20:])  # the new chunk, same seeds
    assert (out / "chunk_00001.npz").stat().st_mtime_ns != stale  # certified again
    with np.load(out / "chunk_00001.npz") as chunk:
        assert str(chunk["images_sha256"]) == images_digest(changed[10:20])


def test_a_killed_targets_run_resumes_from_its_finished_chunks(smoke_run, tmp_path):
    """SIGKILL the CLI (driver and pool) once it has written a chunk; the rerun gives the counts
    of an uninterrupted run. 128 draws per image make a chunk take about half a second here."""
    cfg, work, _ = smoke_run
    more = {"num_samples": 128, "extra_samples": 0}
    slow = dataclasses.replace(cfg, targets=dataclasses.replace(cfg.targets, **more))
    with LocalExecutor(2) as pool, using(pool):
        expected = np.load(targets.run(slow, _copy_work(work, tmp_path / "reference")))
    killed = _copy_work(work, tmp_path / "killed")
    argv = [sys.executable, "-m", "exporter", *_cli_args(cfg, killed, tmp_path), "--workers", "2"]
    argv += ["--set", "targets.num_samples=128", "--set", "targets.extra_samples=0"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    chunk_files = killed / "targets"
    while proc.poll() is None and not list(chunk_files.glob("chunk_?????.npy")):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    finished = sorted(chunk_files.glob("chunk_?????.npy"))
    assert 1 <= len(finished) < len(expected) // cfg.targets.chunk_images  # killed midway
    for path in finished:  # whole chunks only
        index = int(path.stem.split("_")[1])
        rows = slice(index * cfg.targets.chunk_images, (index + 1) * cfg.targets.chunk_images)
        assert np.array_equal(np.load(path), expected[rows])
    with LocalExecutor(2) as pool, using(pool):
        assert np.array_equal(np.load(targets.run(slow, killed)), expected)


def _cli_args(smoke_config, work, tmp_path):
    argv = ["run", "--config", str(SMOKE), "--out", str(tmp_path / "bundle"), "--work", str(work)]
    return argv + ["--set", f"data.root={smoke_config.data.root}", "--stage", "targets"]


def _cli(smoke_config, work, tmp_path, *options):
    assert cli.main([*_cli_args(smoke_config, work, tmp_path), *options]) == 0
    return json.loads((work / "targets" / "meta.json").read_text()), np.load(
        work / "targets" / "counts.npy"
    )


def test_the_cli_runs_targets_on_the_workers_it_is_given(smoke_run, one_process, tmp_path):
    cfg, work, _ = smoke_run
    for workers, name in (("1", "local (1 worker)"), ("2", "local (2 workers)")):
        meta, counts = _cli(
            cfg, _copy_work(work, tmp_path / workers), tmp_path, "--workers", workers
        )
        assert meta["executor"] == name
        assert np.array_equal(counts, one_process[0])


def test_the_cli_refuses_both_ray_options_and_zero_workers(capsys):
    base = ["run", "--config", str(SMOKE), "--out", "unused"]
    for options in (["--ray", "--ray-address", "auto"], ["--workers", "0"]):
        with pytest.raises(SystemExit):
            cli.main(base + options)
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_the_throughput_script_prints_a_row_per_executor(smoke_run, capsys):
    from exporter import throughput

    _, work, _ = smoke_run
    argv = [str(work / "base.onnx"), "--rounds", "2", "--chunks", "2", "--bare-seconds", "0.2"]
    throughput.main([*argv, "--no-ray"])
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [
        "| bare onnxruntime (1 session, every core, no noise)",
        "| local (1 worker)",
        f"| local ({cores()} worker{'s' if cores() > 1 else ''})",
    ]


@pytest.fixture(scope="module")
def ray_executor():
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is missing: CI installs the `cluster` extra (.ci/run)")
        pytest.skip("ray is not installed: pip install -e '.[cluster]'")
    from exporter.executor import RayExecutor

    with RayExecutor(workers=2) as executor:
        yield executor


def test_ray_gives_the_counts_of_one_process(smoke_run, one_process, ray_executor, tmp_path):
    cfg, work, _ = smoke_run
    counts, mc = one_process
    assert ray_executor.describe() == "ray (2 workers)"
    with using(ray_executor):
        _assert_same_counts(_certify(cfg, work, tmp_path / "mc"), mc)
    # through the CLI: --ray joins the Ray this process already runs
    meta, ray_counts = _cli(cfg, _copy_work(work, tmp_path / "w"), tmp_path, "--ray")
    assert meta["executor"] == "ray (2 workers)"
    assert np.array_equal(ray_counts, counts)
