"""Each stage reads the artifacts before it through their owner's API: a missing or stale one is
named with the stage that writes it, and the bundle is rewritten only through the bundle stage."""

from __future__ import annotations

import json

import pytest

from accsmooth.bundle import read_manifest, sha256_of, verify_files
from exporter import bundle, calibrate, onnx_export, targets, train_base
from server.placeholder import write_bundle
from tests.server.helpers import CALIBRATION, CLASSES, SHAPE


def test_a_graph_is_read_only_through_its_export_stage(tmp_path):
    # a graph's lookup names the stage to run; what the sidecar must match is tested with real
    # networks in test_onnx_export.py
    with pytest.raises(FileNotFoundError, match="base.pt: missing; run the train-base stage, then"):
        onnx_export.graph(tmp_path, "base")
    (tmp_path / "base.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="base.onnx: missing; run the export-base stage"):
        onnx_export.graph(tmp_path, "base")
    (tmp_path / "surrogate.pt").write_bytes(b"x")
    (tmp_path / "surrogate.onnx").write_bytes(b"x")  # newer than its checkpoint, no sidecar
    with pytest.raises(
        FileNotFoundError, match="no valid surrogate.onnx.json .*run the export-surrogate stage"
    ):
        onnx_export.graph(tmp_path, "surrogate")


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


def test_evaluation_summaries_replace_or_merge_and_every_file_is_rehashed(tmp_path):
    folder = tmp_path / "tiny"
    write_bundle(folder, classes=CLASSES, shape=SHAPE, calibration=CALIBRATION)
    before = json.loads((folder / "manifest.json").read_text())
    bundle.update_evaluation(folder, {"images": 3})
    bundle.update_evaluation(folder, {"hybrid": {"budget_ms": 50.0}}, merge=True)
    assert read_manifest(folder).evaluation == {"images": 3, "hybrid": {"budget_ms": 50.0}}
    bundle.update_evaluation(folder, {"images": 4})  # evaluate again: a fresh summary
    assert read_manifest(folder).evaluation == {"images": 4}
    (folder / "report.md").write_text("# report\n")
    bundle.rehash(folder)
    after = json.loads((folder / "manifest.json").read_text())
    assert after["sha256"]["report.md"] == sha256_of(folder / "report.md")
    verify_files(folder, read_manifest(folder))
    # the rest of the manifest is rewritten as it was written: same keys, same order
    unchanged = [k for k in before if k not in ("evaluation", "sha256")]
    assert [k for k in after if k in unchanged] == unchanged
    assert all(after[k] == before[k] for k in unchanged)
