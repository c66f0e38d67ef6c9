"""ONNX export: onnxruntime matches torch on real images, a failed parity check stops it, and
a training stage leaves its graph current."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

from accsmooth.bundle import sha256_of
from accsmooth.runtime import OnnxPredictor, make_session
from exporter import train_base
from exporter.onnx_export import ParityError, export

pytestmark = pytest.mark.slow  # every test here reads the smoke pipeline's networks (smoke_run)


@pytest.mark.parametrize("kind", ["base", "surrogate"])
def test_exported_graph_matches_torch_on_real_images(smoke_run, tmp_path, kind):
    cfg, work, _ = smoke_run
    from exporter import data

    images = data.load(work).eval.images
    diff = export(work / f"{kind}.pt", kind, tmp_path / f"{kind}.onnx", cfg.export, images)
    assert diff <= 1e-4
    out = OnnxPredictor(make_session(tmp_path / f"{kind}.onnx"))(data.to_float(images[:7]))
    assert out.shape == (7, 10)  # dynamic batch axis
    if kind == "surrogate":
        assert np.allclose(out.sum(1), 1.0, atol=1e-5)


def test_export_fails_when_parity_is_above_tolerance(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    from exporter import data

    strict = dataclasses.replace(cfg.export, parity_tolerance=-1.0)  # no difference can pass
    with pytest.raises(ParityError, match="differs from torch"):
        export(
            work / "base.pt", "base", tmp_path / "base.onnx", strict, data.load(work).eval.images
        )
    assert not (tmp_path / "base.onnx").exists()


def test_a_finished_training_stage_rerun_converts_a_stale_graph_and_trains_nothing(
    smoke_run, tmp_path
):
    cfg, work, _ = smoke_run
    for name in ("data.npz", "base.pt", "base.onnx"):
        shutil.copy2(work / name, tmp_path / name)
    stamp = (tmp_path / "base.pt").stat().st_mtime
    os.utime(tmp_path / "base.onnx", (stamp - 10, stamp - 10))  # older than its checkpoint
    with pytest.raises(FileNotFoundError, match="older than base.pt; rerun the train-base"):
        train_base.graph(tmp_path)
    train_base.run(cfg, tmp_path)
    assert (tmp_path / "base.pt").stat().st_mtime == stamp  # no epoch trained again
    assert sha256_of(train_base.graph(tmp_path)) == sha256_of(work / "base.onnx")
