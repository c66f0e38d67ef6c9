"""Bundle validation: manifest schema, files and hashes, graph names and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accsmooth.bundle import BundleError, check_graph, read_manifest, verify_files
from accsmooth.runtime import RuntimeOptions, make_session


def edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def session(path: Path):
    return make_session(path, RuntimeOptions(providers=("CPUExecutionProvider",)))


def test_a_written_bundle_reads_and_verifies(make_bundle):
    folder = make_bundle()
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    assert manifest.name == "tiny" and manifest.num_classes == 3
    assert manifest.input.height == 8 and manifest.shift == pytest.approx(0.02)
    check_graph(session(folder / "surrogate.onnx"), manifest, "surrogate")
    check_graph(session(folder / "base.onnx"), manifest, "base")


def test_an_uncalibrated_bundle_has_shift_zero(make_bundle):
    assert read_manifest(make_bundle(calibration=None)).shift == 0.0


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(BundleError, match=r"manifest.json: missing"):
        read_manifest(tmp_path)


def test_invalid_json_is_reported_with_the_file(make_bundle):
    folder = make_bundle()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest.json: not valid JSON"):
        read_manifest(folder)


def test_an_unknown_format_version_is_refused(make_bundle):
    folder = make_bundle()
    edit_manifest(folder, format_version=2)
    with pytest.raises(BundleError, match="format_version 2, this server reads 1"):
        read_manifest(folder)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"sigma": -1}, "sigma: Input should be greater than 0"),
        ({"noise": "laplace"}, "noise"),
        ({"classes": ["only"]}, "classes"),
        ({"protocol": {"n0": 100, "n": 0, "alpha": 0.001}}, "protocol.n"),
        ({"input": {"shape": [1, 8, 8]}}, "input.shape"),
    ],
)
def test_invalid_fields_are_named(make_bundle, changes, message):
    folder = make_bundle()
    edit_manifest(folder, **changes)
    with pytest.raises(BundleError, match=message):
        read_manifest(folder)


def test_a_graph_without_a_hash_is_refused(make_bundle):
    folder = make_bundle()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["sha256"]["base.onnx"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'base.onnx', which has no sha256 entry"):
        read_manifest(folder)


def test_a_changed_file_fails_its_hash(make_bundle):
    folder = make_bundle()
    with (folder / "surrogate.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"surrogate.onnx: sha256 mismatch"):
        verify_files(folder, read_manifest(folder))


def test_a_missing_listed_file_is_named(make_bundle):
    folder = make_bundle(extra_files={"report.json": b"{}"})
    (folder / "report.json").unlink()
    with pytest.raises(BundleError, match=r"report.json: missing \(listed in manifest.json\)"):
        verify_files(folder, read_manifest(folder))


def test_a_hash_entry_outside_the_bundle_is_refused(make_bundle):
    folder = make_bundle()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["../secret"] = "00"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_files(folder, read_manifest(folder))


def test_graph_io_names_must_match_the_manifest(make_bundle):
    folder = make_bundle()
    manifest = read_manifest(folder).model_copy(deep=True)
    renamed = manifest.graphs.surrogate.model_copy(update={"input": "pixels"})
    manifest = manifest.model_copy(
        update={"graphs": manifest.graphs.model_copy(update={"surrogate": renamed})}
    )
    with pytest.raises(
        BundleError, match=r"surrogate.onnx \(surrogate\): graph inputs \['images'\]"
    ):
        check_graph(session(folder / "surrogate.onnx"), manifest, "surrogate")


def test_graph_shapes_must_match_the_manifest(make_bundle, tmp_path):
    folder = make_bundle()
    other = make_bundle("wide", classes=("a", "b", "c", "d"), shape=(3, 8, 8))
    manifest = read_manifest(folder)
    with pytest.raises(BundleError, match=r"output shape \['batch', 4\], expected \[batch, 3\]"):
        check_graph(session(other / "surrogate.onnx"), manifest, "surrogate")
    small = make_bundle("small", shape=(3, 4, 4))
    with pytest.raises(BundleError, match=r"input shape \['batch', 3, 4, 4\]"):
        check_graph(session(small / "base.onnx"), manifest, "base")
