"""Each stage reads the artifacts before it through their owner's API: a missing or stale one is
named with the stage that writes it."""

from __future__ import annotations

import os

import pytest

from exporter import calibrate, targets, train_base, train_surrogate


def _touch(path, mtime: float) -> None:
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_a_graph_is_current_only_when_not_older_than_its_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="base.pt: missing; run the train-base stage"):
        train_base.graph(tmp_path)
    _touch(tmp_path / "base.pt", 1_000)
    with pytest.raises(FileNotFoundError, match="base.onnx: missing; rerun the train-base stage"):
        train_base.graph(tmp_path)
    _touch(tmp_path / "base.onnx", 999)
    with pytest.raises(FileNotFoundError, match="base.onnx: older than base.pt; rerun"):
        train_base.graph(tmp_path)
    _touch(tmp_path / "base.onnx", 1_000)
    assert train_base.graph(tmp_path) == tmp_path / "base.onnx"
    _touch(tmp_path / "surrogate.pt", 1_000)
    _touch(tmp_path / "surrogate.onnx", 2_000)  # e.g. an averaged graph put in its place
    assert train_surrogate.graph(tmp_path) == tmp_path / "surrogate.onnx"


def test_missing_artifacts_name_the_stage_that_writes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the targets stage first"):
        targets.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the calibrate stage first"):
        calibrate.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the train-base stage first"):
        train_base.load(tmp_path)
    result = {"method": "split-conformal", "shift": 0.1}
    assert calibrate.save(tmp_path, result) == tmp_path / "calibration.json"  # name unchanged
    assert calibrate.load(tmp_path) == result
