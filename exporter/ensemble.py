"""An averaged surrogate: one ONNX graph whose output is the mean of several surrogates' outputs.

    python -m exporter.ensemble out.onnx a/surrogate.onnx b/surrogate.onnx

Averaging two surrogates trained differently is a cheap way to shrink the errors of each on
unseen images (their mistakes are partly independent), and the calibration shift is set by the
worst of those errors. The graph has the input `images` and the output `probabilities` of a
surrogate, so a bundle serves it unchanged; it costs one forward pass of each member. Checked
after writing: onnxruntime's output equals the mean of the members' outputs on the given images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session

INPUT, OUTPUT = "images", "probabilities"


def average(members: list[Path], out: Path) -> Path:
    """Write the mean of `members` (surrogate graphs: `images` -> `probabilities`) to `out`."""
    graphs = [
        compose.add_prefix(onnx.load(path), prefix=f"m{i}_") for i, path in enumerate(members)
    ]
    opset = max(o.version for g in graphs for o in g.opset_import if o.domain in ("", "ai.onnx"))
    nodes, initializers, outputs = [], [], []
    for g in graphs:
        (member_input,) = g.graph.input
        (member_output,) = g.graph.output
        nodes.append(helper.make_node("Identity", [INPUT], [member_input.name]))
        nodes.extend(g.graph.node)
        initializers.extend(g.graph.initializer)
        outputs.append(member_output.name)
    weight = helper.make_tensor("mean_weight", onnx.TensorProto.FLOAT, [], [1.0 / len(graphs)])
    initializers.append(weight)
    nodes.append(helper.make_node("Sum", outputs, ["member_sum"]))
    nodes.append(helper.make_node("Mul", ["member_sum", "mean_weight"], [OUTPUT]))
    first = onnx.load(members[0]).graph
    graph = helper.make_graph(
        nodes, "averaged_surrogate", [first.input[0]], [first.output[0]], initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(g.ir_version for g in graphs)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    return out


def parity(members: list[Path], averaged: Path, images: np.ndarray) -> float:
    """Max |averaged(x) - mean of members(x)| on float images [B,3,H,W] (onnxruntime, CPU)."""
    cpu = RuntimeOptions(providers=("CPUExecutionProvider",))
    expected = np.mean([OnnxPredictor(make_session(m, cpu))(images) for m in members], axis=0)
    return float(np.abs(OnnxPredictor(make_session(averaged, cpu))(images) - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.ensemble", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("members", type=Path, nargs="+")
    args = parser.parse_args(argv)
    average(args.members, args.out)
    x = np.random.default_rng(0).random((16, *_input_shape(args.members[0])), dtype=np.float32)
    diff = parity(args.members, args.out, x)
    print(f"{args.out}: mean of {len(args.members)} surrogates; parity max |diff| {diff:.2e}")
    return 0 if diff < 1e-5 else 1


def _input_shape(path: Path) -> tuple[int, ...]:
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(d.dim_value for d in dims)


if __name__ == "__main__":
    sys.exit(main())
