"""The arithmetic behind a latency bar: how many multiply-adds a bundle's surrogate graph spends
per image, and how long this CPU needs for them at its own measured peak.

A graph's batch-1 time cannot fall below (multiply-adds per image) / (the machine's peak rate).
The peak is measured here, on one onnxruntime thread, with one large matrix product in float32
and one in int8 (uint8 x int8, the kernels the int8 surrogates' convolutions use); the graph's
multiply-adds are counted from its convolutions and matrix products, with the shapes it
produces on a real image at batch 1 (probe graphs run the base once per probe inside).

    python -m loadtests.roofline models/cifar10-sigma0.25-probes512 ...   # prints JSON

Its figures on the project's machine: loadtests/results/roofline.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accsmooth.bundle import read_manifest
from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from loadtests.bare import image_tensor, runtime_options, time_calls
from loadtests.machine import machine_facts
from loadtests.serve import server_settings

GEMM_SIZE = 1024  # M = K = N of the peak-rate product: 1.07 G multiply-adds per call
COUNTED = ("Conv", "ConvInteger", "Gemm", "MatMul", "MatMulInteger")


def _weight_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shape of every initializer and of every DequantizeLinear output fed by one."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    return shapes


def graph_macs(path: Path, image: np.ndarray) -> int:
    """Multiply-adds of one call of the graph at `path` on `image` ([1,3,H,W] float32): every
    convolution and matrix product, sized by the output shapes the graph really produces."""
    model = onnx.load(str(path))
    weights = _weight_shapes(model)
    counted = [n for n in model.graph.node if n.op_type in COUNTED]
    listed = {o.name for o in model.graph.output}
    for node in counted:  # expose each counted output so that its shape can be read
        if node.output[0] not in listed:
            model.graph.output.append(helper.make_empty_tensor_value_info(node.output[0]))
    with tempfile.TemporaryDirectory() as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        onnx.save(model, str(exposed))
        session = make_session(exposed, RuntimeOptions(intra_op_threads=1))
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(None, {session.get_inputs()[0].name: image})
        values = dict(zip(names, outputs, strict=True))
    total = 0
    for node in counted:
        out = values[node.output[0]].shape
        w = weights.get(node.input[1])
        if w is None:  # a product of two computed tensors (none in today's graphs)
            raise ValueError(f"{path}: {node.op_type} {node.name!r} has no constant weight")
        if node.op_type in ("Conv", "ConvInteger"):
            per_output = int(np.prod(w[1:]))  # input channels per group x kernel
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            per_output = w[1] if trans_b else w[0]
        total += int(np.prod(out)) * per_output
    return total


def _matmul_model(dtype: str) -> onnx.ModelProto:
    n = GEMM_SIZE
    if dtype == "float32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        b = numpy_helper.from_array(np.full((n, n), 0.01, np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        b = numpy_helper.from_array(np.ones((n, n), np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", [a], [out], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def peak_gmacs(dtype: str, seconds: float = 2.0) -> float:
    """Multiply-adds per second (in billions) of one GEMM_SIZE-cube product on one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"peak-{dtype}.onnx"
        onnx.save(_matmul_model(dtype), str(path))
        session = make_session(path, RuntimeOptions(intra_op_threads=1))
    rng = np.random.default_rng(0)
    if dtype == "float32":
        a = rng.random((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    else:
        a = rng.integers(0, 128, (GEMM_SIZE, GEMM_SIZE), dtype=np.uint8)
    timed = time_calls(lambda rows: session.run(None, {"a": rows}), a, seconds)
    return timed["images_per_s"] * GEMM_SIZE**2 / 1e9  # rows/s x multiply-adds per row


def bundle_roofline(bundle: Path, peaks: dict[str, float], options: RuntimeOptions) -> dict:
    """The bundle's surrogate: multiply-adds per image, its batch-1 time on one thread (the
    server's fast-path session options), and the time its arithmetic needs at the peak rate of
    its precision (int8 where the graph quantizes its convolutions)."""
    manifest = read_manifest(bundle)
    graph = bundle / manifest.graphs.surrogate.file
    image = image_tensor(1, manifest.input.shape)
    macs = graph_macs(graph, image)
    int8 = any(n.op_type == "DequantizeLinear" for n in onnx.load(str(graph)).graph.node)
    precision = "int8" if int8 else "float32"
    timed = time_calls(OnnxPredictor(make_session(graph, options)), image, 2.0)
    ms = timed["call_ms_p50"]
    floor_ms = macs / (peaks[precision] * 1e9) * 1e3
    return {
        "bundle": bundle.name,
        "version": manifest.version,
        "precision": precision,
        "macs_per_image": macs,
        "batch_1_ms_p50": ms,
        "achieved_gmacs": round(macs / ms / 1e6, 1),
        "ms_at_peak": round(floor_ms, 3),
        "share_of_peak": round(floor_ms / ms, 3),
    }


def main(argv: list[str]) -> dict:
    peaks = {dtype: round(peak_gmacs(dtype), 1) for dtype in ("float32", "int8")}
    server = server_settings({"ACCSMOOTH_PROVIDERS": "CPUExecutionProvider"})
    options = runtime_options(server["fast_runtime"] | {"intra_op_threads": 1})
    return {
        "machine": machine_facts(),
        "peak_gmacs_one_thread": peaks,
        "bundles": [bundle_roofline(Path(b), peaks, options) for b in argv],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:] or ["models/cifar10-sigma0.25"]), indent=1))
