"""train-base with `from_onnx`: a trained graph imported as the base, the same function in torch,
and export-base ships that very graph."""

import dataclasses

import numpy as np
import pytest
import torch

from accsmooth.bundle import sha256_of as sha256
from accsmooth.runtime import OnnxPredictor, make_session
from exporter import data, onnx_export, train_base

pytestmark = pytest.mark.slow  # every test here reads the smoke pipeline's base network (smoke_run)


def test_an_imported_base_computes_what_its_onnx_graph_computes(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    imported = dataclasses.replace(
        cfg, train_base=dataclasses.replace(cfg.train_base, from_onnx=str(work / "base.onnx"))
    )
    (tmp_path / "data.npz").symlink_to(work / "data.npz")
    train_base.run(imported, tmp_path)
    assert not (tmp_path / "base.onnx").exists()  # the training stage writes base.pt only
    x = data.to_float(data.load(work).eval.images[:16])
    with torch.no_grad():
        ours = train_base.network(tmp_path)(torch.as_tensor(x)).numpy()
    theirs = OnnxPredictor(make_session(work / "base.onnx"))(x)
    assert np.abs(ours - theirs).max() < 1e-4
    assert train_base.load(tmp_path)["folded_batchnorm"]
    onnx_export.run(imported, tmp_path, "base")  # copies the imported graph, parity-checked
    assert sha256(onnx_export.graph(tmp_path, "base")) == sha256(work / "base.onnx")
    meta = onnx_export.load_sidecar(tmp_path, "base")
    assert (meta["origin"], meta["imported_from"]) == ("imported", str(work / "base.onnx"))
    assert meta["parity"]["max_abs_diff"] < 1e-4
