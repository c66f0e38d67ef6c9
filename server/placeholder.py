"""Tiny real ONNX bundles, built with `onnx.helper`: test fixtures and the `make run` placeholder.

Both graphs are one linear layer on the flattened [0,1] pixels, `logits = x W + b`; the
surrogate adds a softmax. That is a real network with a known answer, which is what tests
need: an "intensity" surrogate with logits (c (m - 1/2), -c (m - 1/2), 0, ...) for the mean
pixel m calls bright images class 0, dark ones class 1 and abstains on mid-grey; a "probe" base
model whose class-0 logit is `w * (x_p - t)` (the others 0) predicts class 0 under noise with
probability Phi((x_p - t) / sigma), exactly. Needs the `onnx` package (dev/exporter extras);
the server itself never imports this module.

    python -m server.placeholder models/placeholder-untrained   # random, UNTRAINED weights
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

from accsmooth.bundle import FORMAT_VERSION, sha256_of

CIFAR10 = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
OPSET = 18


def linear_graph(weight: np.ndarray, bias: np.ndarray, shape, *, softmax: bool, names=None):
    """An ONNX model [B,*shape] -> [B,K]: Flatten, MatMul by weight [D,K], Add bias, (Softmax)."""
    from onnx import TensorProto, helper, numpy_helper

    in_name, out_name = names or (("images", "probabilities") if softmax else ("images", "logits"))
    k = weight.shape[1]
    nodes = [
        helper.make_node("Flatten", [in_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z" if softmax else out_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], [out_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", k])],
        initializer=[
            numpy_helper.from_array(weight.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # readable by every onnxruntime >= 1.17
    return model


def intensity_weights(shape, k: int, c: float = 20.0):
    """Surrogate weights: logits c (m - 1/2), -c (m - 1/2), 0, ... for the mean pixel m."""
    dim = int(np.prod(shape))
    weight = np.zeros((dim, k), dtype=np.float32)
    bias = np.zeros(k, dtype=np.float32)
    weight[:, 0], weight[:, 1] = c / dim, -c / dim
    bias[0], bias[1] = -c / 2, c / 2
    return weight, bias


def probe_weights(shape, pixel: int, w: float, t: float, k: int = 2):
    """Base weights: class-0 logit w * (x[pixel] - t), the others 0 (`pixel`: flat index)."""
    weight = np.zeros((int(np.prod(shape)), k), dtype=np.float32)
    bias = np.zeros(k, dtype=np.float32)
    weight[pixel, 0] = w
    bias[0] = -w * t
    return weight, bias


def write_bundle(
    folder: Path,
    *,
    name: str | None = None,
    classes=("cat", "dog", "bird"),
    shape=(3, 8, 8),
    sigma: float = 0.25,
    protocol=None,
    calibration: dict | None = None,
    surrogate: tuple[np.ndarray, np.ndarray] | None = None,
    base: tuple[np.ndarray, np.ndarray] | None = None,
    description: str = "test bundle",
    extra_files: dict[str, bytes] | None = None,
) -> dict:
    """Write a complete, valid bundle (graphs, manifest, correct sha256s); returns the manifest.

    Defaults: the intensity surrogate and a probe base model on pixel 0 with threshold 1/2.
    """
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = len(classes)
    if surrogate is None:
        surrogate = intensity_weights(shape, k)
    if base is None:
        base = probe_weights(shape, pixel=0, w=100.0, t=0.5, k=k)
    onnx.save(linear_graph(*surrogate, shape, softmax=True), folder / "surrogate.onnx")
    onnx.save(linear_graph(*base, shape, softmax=False), folder / "base.onnx")
    for file, data in (extra_files or {}).items():
        (folder / file).write_bytes(data)
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name or folder.name,
        "version": "0.0.1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": description,
        "classes": list(classes),
        "input": {"shape": list(shape), "dtype": "float32", "layout": "NCHW", "range": [0, 1]},
        "sigma": sigma,
        "noise": "gaussian",
        "protocol": protocol or {"n0": 100, "n": 10000, "alpha": 0.001},
        "calibration": calibration,
        "graphs": {
            "surrogate": {
                "file": "surrogate.onnx",
                "input": "images",
                "output": "probabilities",
                "opset": OPSET,
            },
            "base": {"file": "base.onnx", "input": "images", "output": "logits", "opset": OPSET},
        },
        "sha256": {f: sha256_of(folder / f) for f in files},
        "exporter": {"tool": "server.placeholder"},
        "evaluation": None,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the bundle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    dim = 3 * 32 * 32
    weights = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(dim, len(CIFAR10)))
    bias = np.zeros(len(CIFAR10))
    write_bundle(
        args.folder,
        classes=CIFAR10,
        shape=(3, 32, 32),
        sigma=0.25,
        surrogate=(weights * 20, bias),
        base=(weights, bias),
        description="PLACEHOLDER: random UNTRAINED linear model; its certificates mean nothing. "
        "Replace with an exported bundle.",
    )
    print(f"wrote placeholder bundle {args.folder}")


if __name__ == "__main__":
    main()
