"""The export stages: each writes its graph with a sidecar naming the checkpoint it came from,
converts nothing on a current graph, converts again after retraining, adopts a graph written
before the export stages existed without rewriting it, and stops on a failed parity check.

The fast tests train a real base network for one epoch on the committed tiny CIFAR-10 slice
(seconds); the slow ones read the smoke pipeline's networks (`smoke_run`).
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch

from accsmooth.bundle import sha256_of
from accsmooth.runtime import OnnxPredictor, make_session
from exporter import data, onnx_export, train_base
from exporter.config import load_config
from exporter.onnx_export import ParityError, export
from tests.exporter.conftest import SMOKE, TINY

TINY_DATA = [
    f"data.root={TINY}",
    "data.train_per_class=10",
    "data.test_per_class=10",
    "data.calibration_images=30",
    "data.calibration_test_images=0",
    "data.holdout_images=0",
    "data.eval_every=4",
    "data.eval_images=20",
    "train_base.epochs=1",
]


def _with(cfg, section, **fields):
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)}
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, work folder holding data.npz and a base.pt trained for one epoch)."""
    cfg = load_config(SMOKE, TINY_DATA)
    work = tmp_path_factory.mktemp("tiny-work")
    data.prepare(cfg.data, work)
    train_base.run(cfg, work)
    return cfg, work


@pytest.fixture
def work(tiny, tmp_path):
    """A fresh copy of the tiny work folder (mtimes kept), no graph in it yet."""
    _, src = tiny
    dst = tmp_path / "work"
    dst.mkdir()
    for name in ("data.npz", "base.pt"):
        shutil.copy2(src / name, dst / name)
    return dst


def _retrain(cfg, work, seed):
    """A different base.pt in `work`: trained again from scratch with another seed."""
    (work / "base.pt").unlink()
    train_base.run(_with(cfg, "train_base", seed=seed), work)


def _files(work):
    """{name: (bytes, mtime_ns)} of the graph and its sidecar."""
    return {
        name: ((work / name).read_bytes(), (work / name).stat().st_mtime_ns)
        for name in ("base.onnx", "base.onnx.json")
    }


def _opset(path):
    import onnx

    return next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))


def test_the_export_stage_writes_the_graph_and_a_sidecar_naming_its_checkpoint(tiny, work):
    cfg, _ = tiny
    assert not (work / "base.onnx").exists()  # the training stage converts nothing
    path = onnx_export.run(cfg, work, "base")
    assert path == work / "base.onnx" == onnx_export.graph(work, "base")
    meta = json.loads((work / "base.onnx.json").read_text())
    assert meta == onnx_export.load_sidecar(work, "base")
    assert meta["checkpoint_sha256"] == sha256_of(work / "base.pt")
    assert meta["graph_sha256"] == sha256_of(path)
    assert (meta["kind"], meta["origin"], meta["checkpoint"]) == ("base", "converted", "base.pt")
    assert meta["parity"]["images"] == cfg.export.parity_images == 16
    assert 0 <= meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 1e-4
    assert (meta["opset"], meta["torch"]) == (cfg.export.opset, torch.__version__)
    x = data.to_float(data.load(work).eval.images[:5])
    with torch.no_grad():
        expected = train_base.network(work)(torch.as_tensor(x)).numpy()
    assert np.abs(OnnxPredictor(make_session(path))(x) - expected).max() <= 1e-4


def test_a_rerun_on_a_current_graph_converts_nothing(tiny, work):
    cfg, _ = tiny
    onnx_export.run(cfg, work, "base")
    before = _files(work)
    (work / "data.npz").unlink()  # a conversion or a parity check would need the images
    assert onnx_export.run(cfg, work, "base") == work / "base.onnx"
    assert _files(work) == before


def test_a_retrained_checkpoint_is_refused_until_the_stage_converts_it_again(tiny, work):
    cfg, _ = tiny
    onnx_export.run(cfg, work, "base")
    old = sha256_of(work / "base.onnx")
    _retrain(cfg, work, seed=1)
    with pytest.raises(
        FileNotFoundError, match="converted from another base.pt .*; run the export-base stage"
    ):
        onnx_export.graph(work, "base")
    onnx_export.run(cfg, work, "base")
    meta = onnx_export.load_sidecar(work, "base")
    assert meta["origin"] == "converted" and meta["graph_sha256"] != old
    assert meta["checkpoint_sha256"] == sha256_of(work / "base.pt")


def test_a_graph_without_sidecar_is_adopted_with_its_bytes_unchanged(tiny, work):
    cfg, _ = tiny
    # what the training stage wrote before the export stages existed: a graph and no sidecar,
    # here at another opset than the config's, so that a conversion could not give these bytes
    older = dataclasses.replace(cfg.export, opset=17)
    export(work / "base.pt", "base", work / "base.onnx", older, data.load(work).calib.images)
    legacy = (work / "base.onnx").read_bytes(), (work / "base.onnx").stat().st_mtime_ns
    with pytest.raises(FileNotFoundError, match="no valid base.onnx.json .*run the export-base"):
        onnx_export.graph(work, "base")
    onnx_export.run(cfg, work, "base")
    assert ((work / "base.onnx").read_bytes(), (work / "base.onnx").stat().st_mtime_ns) == legacy
    meta = onnx_export.load_sidecar(work, "base")
    assert (meta["origin"], meta["opset"]) == ("adopted", 17)
    assert meta["graph_sha256"] == sha256_of(work / "base.onnx")


def test_a_graph_without_sidecar_older_than_its_checkpoint_is_converted_again(tiny, work):
    cfg, _ = tiny
    older = dataclasses.replace(cfg.export, opset=17)
    export(work / "base.pt", "base", work / "base.onnx", older, data.load(work).calib.images)
    stamp = (work / "base.pt").stat().st_mtime
    os.utime(work / "base.onnx", (stamp - 10, stamp - 10))
    onnx_export.run(cfg, work, "base")
    meta = onnx_export.load_sidecar(work, "base")
    assert (meta["origin"], meta["opset"]) == ("converted", cfg.export.opset)


def test_a_replaced_graph_is_refused_then_checked_and_kept(tiny, work):
    cfg, _ = tiny
    onnx_export.run(cfg, work, "base")
    # the same network at another opset put in place of the graph the stage wrote
    older = dataclasses.replace(cfg.export, opset=17)
    export(work / "base.pt", "base", work / "base.onnx", older, data.load(work).calib.images)
    replaced = (work / "base.onnx").read_bytes()
    with pytest.raises(FileNotFoundError, match="changed since base.onnx.json was written"):
        onnx_export.graph(work, "base")
    onnx_export.run(cfg, work, "base")
    assert (work / "base.onnx").read_bytes() == replaced
    assert onnx_export.load_sidecar(work, "base")["origin"] == "adopted"


def test_a_failed_parity_check_leaves_no_graph(tiny, work):
    cfg, _ = tiny
    strict = _with(cfg, "export", parity_tolerance=-1.0)  # no difference can pass
    with pytest.raises(ParityError, match="differs from torch"):
        onnx_export.run(strict, work, "base")
    assert sorted(p.name for p in work.iterdir()) == ["base.pt", "data.npz"]
    # nor does it leave a stale graph in place: the one converted before retraining goes too
    onnx_export.run(cfg, work, "base")
    _retrain(cfg, work, seed=1)
    with pytest.raises(ParityError, match="differs from torch"):
        onnx_export.run(strict, work, "base")
    assert sorted(p.name for p in work.iterdir()) == ["base.pt", "data.npz"]
    with pytest.raises(FileNotFoundError, match="base.onnx: missing; run the export-base stage"):
        onnx_export.graph(work, "base")


@pytest.mark.parametrize("found", ["another network", "corrupted"])
def test_a_found_graph_that_fails_the_check_is_kept_and_never_read(tiny, work, tmp_path, found):
    cfg, _ = tiny
    if found == "corrupted":
        (work / "base.onnx").write_bytes(b"not an onnx graph")
        message = "onnxruntime cannot load it"
    else:  # e.g. a graph put there by hand: converted from another base.pt
        other = tmp_path / "other"
        other.mkdir()
        shutil.copy2(work / "data.npz", other / "data.npz")
        train_base.run(_with(cfg, "train_base", seed=1), other)
        images = data.load(work).calib.images
        export(other / "base.pt", "base", work / "base.onnx", cfg.export, images)
        message = "differs from torch"
    found_bytes = (work / "base.onnx").read_bytes()
    with pytest.raises(ParityError, match=f"{message}.*kept as it was.*remove it to convert"):
        onnx_export.run(cfg, work, "base")
    assert (work / "base.onnx").read_bytes() == found_bytes
    assert not (work / "base.onnx.json").exists()
    with pytest.raises(FileNotFoundError, match="no valid base.onnx.json"):
        onnx_export.graph(work, "base")


def test_a_missing_checkpoint_names_the_training_stage(tmp_path):
    cfg = load_config(SMOKE, TINY_DATA)
    with pytest.raises(FileNotFoundError, match="surrogate.pt: missing; run the train-surrogate"):
        onnx_export.run(cfg, tmp_path, "surrogate")
    with pytest.raises(ValueError, match="unknown network 'head'"):
        onnx_export.graph(tmp_path, "head")


# The smoke pipeline's networks: both kinds, and a rerun of a finished training stage.


@pytest.mark.parametrize("kind", ["base", "surrogate"])
def test_exported_graph_matches_torch_on_real_images(smoke_run, tmp_path, kind):
    cfg, work, _ = smoke_run
    images = data.load(work).eval.images
    diff = export(work / f"{kind}.pt", kind, tmp_path / f"{kind}.onnx", cfg.export, images)
    assert diff <= 1e-4
    out = OnnxPredictor(make_session(tmp_path / f"{kind}.onnx"))(data.to_float(images[:7]))
    assert out.shape == (7, 10)  # dynamic batch axis
    if kind == "surrogate":
        assert np.allclose(out.sum(1), 1.0, atol=1e-5)


def test_export_fails_when_parity_is_above_tolerance(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    strict = dataclasses.replace(cfg.export, parity_tolerance=-1.0)  # no difference can pass
    with pytest.raises(ParityError, match="differs from torch"):
        export(
            work / "base.pt", "base", tmp_path / "base.onnx", strict, data.load(work).eval.images
        )
    assert list(tmp_path.iterdir()) == []


def test_the_pipeline_wrote_both_graphs_through_the_export_stages(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    for kind in ("base", "surrogate"):
        meta = onnx_export.load_sidecar(work, kind)
        assert meta["origin"] == "converted" and meta["parity"]["max_abs_diff"] <= 1e-4
    # export-surrogate on a copy of the surrogate checkpoint alone gives the very same graph
    for name in ("data.npz", "surrogate.pt"):
        shutil.copy2(work / name, tmp_path / name)
    onnx_export.run(cfg, tmp_path, "surrogate")
    assert sha256_of(onnx_export.graph(tmp_path, "surrogate")) == sha256_of(work / "surrogate.onnx")


def test_a_finished_training_stage_rerun_trains_and_converts_nothing(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    for name in ("data.npz", "base.pt"):
        shutil.copy2(work / name, tmp_path / name)
    stamp = (tmp_path / "base.pt").stat().st_mtime
    train_base.run(cfg, tmp_path)
    assert (tmp_path / "base.pt").stat().st_mtime == stamp  # no epoch trained again
    assert not (tmp_path / "base.onnx").exists()
    with pytest.raises(FileNotFoundError, match="base.onnx: missing; run the export-base stage"):
        onnx_export.graph(tmp_path, "base")


def _op_types(path):
    import onnx

    return {node.op_type for node in onnx.load(path).graph.node}


def test_an_int8_surrogate_is_quantized_checked_and_converted_again_on_a_precision_change(
    smoke_run, tmp_path
):
    cfg, work, _ = smoke_run
    for name in ("data.npz", "surrogate.pt"):
        shutil.copy2(work / name, tmp_path / name)
    int8 = _with(cfg, "export", int8_surrogate=True, int8_images=32)
    graph = onnx_export.run(int8, tmp_path, "surrogate")
    meta = onnx_export.load_sidecar(tmp_path, "surrogate")
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(graph)
    assert meta["int8"]["calibration_images"] == 32
    assert meta["int8"]["top1_disagreement"] <= int8.export.int8_max_disagreement
    assert meta["parity"]["max_abs_diff"] <= 1e-4  # the float graph's, before quantization
    images = data.to_float(data.load(tmp_path).eval.images[:50])
    float_probs = OnnxPredictor(make_session(work / "surrogate.onnx"))(images)
    int8_probs = OnnxPredictor(make_session(graph))(images)
    assert np.allclose(int8_probs.sum(1), 1.0, atol=1e-5)
    assert 0 < np.abs(int8_probs - float_probs).max() < 0.2  # another graph, close to the float one
    assert np.mean(int8_probs.argmax(1) == float_probs.argmax(1)) >= 0.9

    again = sha256_of(graph)
    onnx_export.run(int8, tmp_path, "surrogate")  # current: nothing to convert
    assert sha256_of(graph) == again
    assert meta["int8"]["float_image_convs"] is False
    float_convs = _with(int8, "export", int8_float_image_convs=True)
    onnx_export.run(float_convs, tmp_path, "surrogate")  # another int8 graph: converted again
    assert onnx_export.load_sidecar(tmp_path, "surrogate")["int8"]["float_image_convs"] is True
    assert sha256_of(graph) != again
    kept = sha256_of(graph)
    onnx_export.run(float_convs, tmp_path, "surrogate")  # current now
    assert sha256_of(graph) == kept
    onnx_export.run(cfg, tmp_path, "surrogate")  # the config asks for float again
    assert "int8" not in onnx_export.load_sidecar(tmp_path, "surrogate")
    assert sha256_of(graph) == sha256_of(work / "surrogate.onnx")


def test_an_int8_surrogate_that_names_other_classes_fails_and_leaves_no_graph(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    for name in ("data.npz", "surrogate.pt"):
        shutil.copy2(work / name, tmp_path / name)
    # no disagreement, not even none, passes a negative bound
    strict = _with(cfg, "export", int8_surrogate=True, int8_images=8, int8_max_disagreement=-1.0)
    with pytest.raises(ParityError, match="int8 graph names another class"):
        onnx_export.run(strict, tmp_path, "surrogate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "surrogate.pt"]


def _weights_read_through_dequantize(model):
    """{Conv name: True when its weight comes from a DequantizeLinear (int8), else False}."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: n.input[1] in dequantized for n in model.graph.node if n.op_type == "Conv"}


def test_pooling_before_the_relu_after_the_image_convolution_is_the_same_function(tiny, work):
    import onnx

    cfg, _ = tiny
    graph = onnx_export.run(cfg, work, "base")
    model = onnx.load(graph)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    first = onnx_export.image_convolutions(model)
    assert first == [convs[0].name] and len(convs) > 1  # the one reading 3 channels
    moved = onnx_export.pool_before_relu(model, first)
    order = [n.op_type for n in moved.graph.node]
    at = [n.name for n in moved.graph.node].index(first[0])
    assert order[at : at + 3] == ["Conv", "MaxPool", "Relu"]
    assert [n.op_type for n in model.graph.node][at : at + 3] == ["Conv", "Relu", "MaxPool"]
    assert order.count("Relu") == [n.op_type for n in model.graph.node].count("Relu")
    rewritten = work / "moved.onnx"
    onnx.save(moved, rewritten)
    x = data.to_float(data.load(work).eval.images[:20])
    want = OnnxPredictor(make_session(graph))(x)
    got = OnnxPredictor(make_session(rewritten))(x)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("float_image_convs", [False, True])
def test_int8_quantization_can_keep_the_image_convolutions_float(tiny, work, float_image_convs):
    import onnx

    cfg, _ = tiny
    graph = onnx_export.run(cfg, work, "base")
    first = onnx_export.image_convolutions(onnx.load(graph))
    settings = _with(cfg, "export", int8_images=16, int8_float_image_convs=float_image_convs)
    out = work / "base.int8.onnx"
    onnx_export.quantize(graph, out, settings.export, data.load(work).train.images)
    quantized = _weights_read_through_dequantize(onnx.load(out))
    assert quantized == {name: not (float_image_convs and name in first) for name in quantized}
    assert [p.name for p in work.iterdir() if "tmp" in p.name] == []
    x = data.to_float(data.load(work).eval.images[:40])
    want = OnnxPredictor(make_session(graph))(x)
    got = OnnxPredictor(make_session(out))(x)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9
