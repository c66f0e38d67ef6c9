"""The roofline's arithmetic on tiny real graphs whose multiply-adds are known by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from loadtests import roofline

CONV_MACS = 4 * 8 * 8 * (3 * 3 * 3)  # [1,4,8,8] outputs, each 3 channels x 3x3
GEMM_MACS = 10 * 256  # [1,10] outputs, each 256 inputs


def _conv_gemm_graph(path: Path, *, quantized: bool, copies: int = 1) -> None:
    """images [B,3,8,8] -> (tiled `copies` times) conv 3->4 (3x3, pad 1) -> flatten -> gemm ->
    [B*copies, 10]; with `quantized`, both weights int8 behind DequantizeLinear (the QDQ form
    of the int8 surrogates)."""
    rng = np.random.default_rng(0)
    w_conv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_gemm = rng.standard_normal((10, 256)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(np.array([copies, 1, 1, 1]), "reps")]
    nodes.append(helper.make_node("Tile", ["images", "reps"], ["tiled"]))
    for name, w in (("w_conv", w_conv), ("w_gemm", w_gemm)):
        if quantized:
            inits += [
                numpy_helper.from_array(np.clip(w * 20, -127, 127).astype(np.int8), name + "_q"),
                numpy_helper.from_array(np.array(0.05, np.float32), name + "_s"),
            ]
            nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s"], [name]))
        else:
            inits.append(numpy_helper.from_array(w, name))
    nodes += [
        helper.make_node("Conv", ["tiled", "w_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["conv"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_gemm"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("quantized", [False, True])
def test_counts_the_multiply_adds_of_each_convolution_and_matrix_product(tmp_path, quantized):
    path = tmp_path / "tiny.onnx"
    _conv_gemm_graph(path, quantized=quantized)
    image = np.zeros((1, 3, 8, 8), np.float32)
    assert roofline.graph_macs(path, image) == CONV_MACS + GEMM_MACS


def test_counts_the_passes_a_graph_makes_inside_from_one_image(tmp_path):
    path = tmp_path / "probes.onnx"
    _conv_gemm_graph(path, quantized=False, copies=5)
    image = np.zeros((1, 3, 8, 8), np.float32)
    assert roofline.graph_macs(path, image) == 5 * (CONV_MACS + GEMM_MACS)


def test_counting_leaves_the_graph_file_as_it_was(tmp_path):
    path = tmp_path / "tiny.onnx"
    _conv_gemm_graph(path, quantized=True)
    before = path.read_bytes()
    roofline.graph_macs(path, np.zeros((1, 3, 8, 8), np.float32))
    assert path.read_bytes() == before


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_peak_rate_product_computes_a_real_product(tmp_path, dtype):
    path = tmp_path / "peak.onnx"
    onnx.save(roofline._matmul_model(dtype), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = roofline.GEMM_SIZE
    rng = np.random.default_rng(1)
    if dtype == "float32":
        a = rng.random((n, n), dtype=np.float32)
        expected = a.sum(axis=1, keepdims=True) * np.float32(0.01)
        np.testing.assert_allclose(session.run(None, {"a": a})[0][:, :1], expected, rtol=1e-4)
    else:
        a = rng.integers(0, 128, (n, n), dtype=np.uint8)
        expected = a.astype(np.int64).sum(axis=1, keepdims=True)
        np.testing.assert_array_equal(session.run(None, {"a": a})[0][:, :1], expected)
