"""Stages 3 and 6, export-base and export-surrogate: each network's ONNX graph, parity-checked
against torch, with a sidecar that records which checkpoint it came from.

Pinned exporter path: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, opset from
the config, one input `images` [B,3,H,W] with a dynamic batch axis. The base graph outputs
`logits`; the surrogate graph ends in a softmax and outputs `probabilities`. After writing, the
graph is run in onnxruntime on real images (the calibration images) and compared with torch:
the stage fails when the max abs difference exceeds the tolerance (1e-4 by default).

Why stages of their own, and why there in the order: the training stages write checkpoints
only (`<kind>.pt`); targets, calibrate and evaluate sample the very graph the bundle ships
(their Monte-Carlo folders are stamped with its sha256), so each graph is made right after its
network, export-base after train-base and export-surrogate after train-surrogate, and the
bundle stage copies them unchanged. With `train_base.from_onnx`, export-base copies that graph
(what the old bundle served) instead of converting, and checks it the same way.

Artifacts: `<work>/<kind>.onnx` and its sidecar `<work>/<kind>.onnx.json`: the sha256 of the
checkpoint it came from and of the graph, the parity check (max |diff|, images, tolerance), the
opset, the torch version (that converted it, or that checked a graph it did not convert), and
`origin` (`converted`, `imported` from `train_base.from_onnx`, or `adopted`: found there with
no sidecar that vouches for it, checked and kept). Later stages read a graph through
`graph(work, kind)`, which returns it only while the sidecar matches both files, and otherwise
names the stage to run.

A rerun converts nothing while the sidecar matches. It converts again when the graph is missing
or stale: the sidecar names another checkpoint, or there is no sidecar and the graph is older
than its checkpoint. Any other graph there is checked and kept byte for byte (the sidecar is
written only once it passes): this adopts the graphs the training stages wrote before these
stages existed, whose bytes the Monte-Carlo folders of those work folders are stamped with.
With `export.int8_surrogate`, the surrogate graph that passed parity is then quantized to int8
(`quantize`: its convolutions, 7-bit weights per channel, activation ranges from training
images) and checked against the float graph (`quantization_check`: top-class disagreement on the
parity images at most `int8_max_disagreement`); the sidecar's `int8` records that check, and a
graph of the other precision than the config asks for is converted again. Calibration and
evaluation then run on the int8 graph, so its guarantee is the graph's that is served.
A failed check raises ParityError: a conversion then leaves no graph; a graph that was found
there is left as it was, without a sidecar, so that no stage reads it.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from accsmooth.bundle import sha256_of
from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from exporter import data as data_stage
from exporter import models, probes, train_base, train_surrogate
from exporter.config import Config, ExportConfig

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = {"base": "logits", "surrogate": "probabilities"}
STAGES = {"base": "export-base", "surrogate": "export-surrogate"}
TRAINED_BY = {"base": "train-base", "surrogate": "train-surrogate"}
SIDECAR_SUFFIX = ".json"  # <kind>.onnx.json


class ParityError(RuntimeError):
    """The graph does not compute what its checkpoint computes: onnxruntime's output differs
    from torch's by more than the tolerance, or onnxruntime cannot run it as that network."""


def _paths(work: Path, kind: str) -> tuple[Path, Path, Path]:
    """(checkpoint, graph, sidecar) of `kind`; the training stages name the checkpoints (read
    here at call time: train_surrogate imports targets, which imports this module)."""
    if kind not in STAGES:
        raise ValueError(f"unknown network {kind!r}: one of {', '.join(STAGES)}")
    trained = {"base": train_base.CHECKPOINT, "surrogate": train_surrogate.CHECKPOINT}[kind]
    graph_path = work / f"{kind}.onnx"
    return work / trained, graph_path, graph_path.with_name(graph_path.name + SIDECAR_SUFFIX)


def network(checkpoint: Path, kind: str) -> torch.nn.Module:
    """The torch network a `kind` graph must compute: the checkpoint's, with a softmax for the
    surrogate, or the probe surrogate around it when the checkpoint holds a probe head."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    net = models.from_state(state)
    if kind == "surrogate":
        if "probe_head" in state:
            return probes.from_checkpoint(net, state["probe_head"])
        net = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    return net


def _to_onnx(net: torch.nn.Module, kind: str, out: Path, cfg: ExportConfig, shape) -> None:
    _trace(net, OUTPUT_NAMES[kind], out, cfg, shape)
    if isinstance(net, probes.ProbeSurrogate) and net.noise.dtype == torch.float16:
        model = probes.store_noise_half(onnx.load(out), net.noise.float().numpy())
        onnx.save(model, out)


def _trace(net: torch.nn.Module, output: str, out: Path, cfg: ExportConfig, shape) -> None:
    """`net` as an ONNX graph at `out`: input INPUT_NAME [batch, *shape] -> `output`."""
    example = torch.zeros(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
            opset_version=cfg.opset,
            dynamo=False,
        )


def int8_features_graph(
    net: probes.ProbeFeatures, out: Path, cfg: ExportConfig, train_images: np.ndarray
) -> Path:
    """`net` (a probe surrogate up to its head) at `out`, its convolutions quantized by
    `quantize` from the same training images as the int8 surrogate graph: the same
    convolutions on the same inputs, so the same ranges and the same int8 arithmetic, and
    therefore the features that graph's heads will read once served."""
    tmp = out.with_suffix(".float.tmp.onnx")
    try:
        _trace(net, "features", tmp, cfg, train_images.shape[1:])
        quantize(tmp, out, cfg, train_images)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def parity(
    net: torch.nn.Module, graph: Path, kind: str, cfg: ExportConfig, images: np.ndarray
) -> tuple[float, int]:
    """(max |onnxruntime - torch|, images compared) on the first `parity_images` of `images`;
    ParityError above the tolerance, or when onnxruntime cannot run `graph` as a `kind` graph
    (input `images`, output named for its kind, one row per image)."""
    x = data_stage.to_float(images[: cfg.parity_images])
    with torch.no_grad():
        expected = net(torch.as_tensor(x)).numpy()
    try:
        session = make_session(graph, RuntimeOptions(providers=("CPUExecutionProvider",)))
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        raise ParityError(f"{graph.name}: onnxruntime cannot load it ({exc})") from exc
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAMES[kind]]):
        raise ParityError(
            f"{graph.name}: inputs and outputs {names}, a {kind} graph has "
            f"{([INPUT_NAME], [OUTPUT_NAMES[kind]])}"
        )
    got = OnnxPredictor(session)(x)
    if got.shape != expected.shape:
        raise ParityError(f"{graph.name}: outputs {got.shape}, torch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= cfg.parity_tolerance:
        raise ParityError(
            f"{graph.name}: onnxruntime differs from torch by {diff:.2e} "
            f"> tolerance {cfg.parity_tolerance:.0e} on {len(x)} images"
        )
    return diff, len(x)


def export(checkpoint: Path, kind: str, out: Path, cfg: ExportConfig, images: np.ndarray) -> float:
    """Convert `kind` ("base"|"surrogate") from `checkpoint` to `out`; returns the parity max diff.
    On ParityError nothing is written to `out`."""
    net = network(checkpoint, kind)
    tmp = out.with_suffix(".tmp.onnx")
    try:
        _to_onnx(net, kind, tmp, cfg, images.shape[1:])
        diff, n = parity(net, tmp, kind, cfg, images)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("export %s -> %s: parity max |diff| %.2e on %d real images", kind, out, diff, n)
    return diff


def image_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose weights read as many channels as the graph's input image
    has (ungrouped): the first convolution of each network, on the image or its noisy copies."""
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and len(weights.get(node.input[1], ())) == 4
        and weights[node.input[1]][1] == channels
        and all(a.name != "group" or a.i == 1 for a in node.attribute)
    ]


def pool_before_relu(model: onnx.ModelProto, convolutions: list[str]) -> onnx.ModelProto:
    """A copy of `model` where each named Conv followed by Relu and then MaxPool (and nothing
    else reading either output) computes Conv -> MaxPool -> Relu instead: the same function, as
    ReLU and max-pooling commute. A float convolution's pooling then reads the convolution's
    float output, and onnxruntime keeps it in its blocked float layout; after a ReLU it moves
    the next convolution's quantization above the pooling and pools uint8 in NCHW, several
    times slower."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    moved: set[str] = set()  # tensors that now hold another value (pooled, not rectified)
    for conv in (n for n in nodes if n.name in convolutions):
        after = readers.get(conv.output[0], [])
        if len(after) != 1 or after[0].op_type != "Relu":
            continue
        relu = after[0]
        pooled = readers.get(relu.output[0], [])
        if len(pooled) != 1 or pooled[0].op_type != "MaxPool" or len(pooled[0].output) != 1:
            continue
        pool = pooled[0]
        between, result = relu.output[0], pool.output[0]
        pool.input[0], pool.output[0] = conv.output[0], between
        relu.input[0], relu.output[0] = between, result
        i, j = nodes.index(relu), nodes.index(pool)
        nodes[i], nodes[j] = pool, relu  # the pooling now runs first
        moved.add(between)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [v for v in out.graph.value_info if v.name not in moved]  # its shape changed
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out


def quantize(graph: Path, out: Path, cfg: ExportConfig, train_images: np.ndarray) -> None:
    """`graph`'s int8 copy at `out`: convolutions quantized statically (QDQ, weights per channel
    in 7 bits, activations uint8 with MinMax ranges over the first `int8_images` training
    images, one at a time as the server runs them). Deterministic for the same inputs. With
    `int8_float_image_convs`, the convolutions on the image stay float32 (`image_convolutions`,
    their pooling moved before their ReLU by `pool_before_relu`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    x = data_stage.to_float(train_images[: cfg.int8_images])

    class Images(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(len(x)))

        def get_next(self):
            i = next(self.rows, None)
            return None if i is None else {INPUT_NAME: x[i : i + 1]}

    source, kept_float = graph, []
    if cfg.int8_float_image_convs:
        model = onnx.load(str(graph))
        kept_float = image_convolutions(model)
        source = out.with_suffix(".pooled.tmp.onnx")
        onnx.save(pool_before_relu(model, kept_float), str(source))
    try:
        quantize_static(
            str(source),
            str(out),
            Images(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=kept_float,
            per_channel=True,
            reduce_range=True,  # 7-bit weights: no int16 saturation on CPUs without VNNI
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        if source != graph:
            source.unlink(missing_ok=True)


def quantization_check(
    graph: Path, int8: Path, cfg: ExportConfig, images: np.ndarray, calibration_images: int
) -> dict:
    """How far the int8 graph is from the float one on the parity images: max |diff| of the
    probabilities and the share of images where the top class differs; ParityError above
    `int8_max_disagreement`."""
    x = data_stage.to_float(images[: cfg.parity_images])
    options = RuntimeOptions(providers=("CPUExecutionProvider",))
    want = OnnxPredictor(make_session(graph, options))(x)
    got = OnnxPredictor(make_session(int8, options))(x)
    disagreement = float(np.mean(want.argmax(1) != got.argmax(1)))
    if disagreement > cfg.int8_max_disagreement:
        raise ParityError(
            f"{int8.name}: the int8 graph names another class than the float one on "
            f"{disagreement:.1%} of {len(x)} images (> {cfg.int8_max_disagreement:.1%})"
        )
    return {
        "calibration_images": calibration_images,
        "max_abs_diff": float(np.abs(want - got).max()),
        "top1_disagreement": disagreement,
        "images": len(x),
    }


def _read_sidecar(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _not_current(checkpoint: Path, graph: Path, sidecar: Path, kind: str) -> str | None:
    """Why `graph` may not be sampled (None: its sidecar vouches for it)."""
    meta = _read_sidecar(sidecar)
    if meta is None:
        return f"no valid {sidecar.name} (the {STAGES[kind]} stage did not write or check it)"
    if meta.get("checkpoint_sha256") != sha256_of(checkpoint):
        return f"converted from another {checkpoint.name} than the one there now"
    if meta.get("graph_sha256") != sha256_of(graph):
        return f"changed since {sidecar.name} was written"
    return None


def graph(work: Path, kind: str) -> Path:
    """`<work>/<kind>.onnx`, the graph the Monte-Carlo stages sample and the bundle ships, while
    its sidecar vouches for it (checked against the checkpoint there now, bytes unchanged since);
    else FileNotFoundError naming the stage to run."""
    checkpoint, path, sidecar = _paths(work, kind)
    stage = STAGES[kind]
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"{checkpoint}: missing; run the {TRAINED_BY[kind]} stage, then {stage}"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the {stage} stage")
    why = _not_current(checkpoint, path, sidecar, kind)
    if why:
        raise FileNotFoundError(f"{path}: {why}; run the {stage} stage")
    return path


def load_sidecar(work: Path, kind: str) -> dict:
    """The sidecar of the current `kind` graph (see the module docstring for its keys)."""
    graph(work, kind)
    return json.loads(_paths(work, kind)[2].read_text())


def _stale(checkpoint: Path, path: Path, meta: dict | None) -> bool:
    """Convert again: missing, converted from another checkpoint, or (no sidecar) older than
    the checkpoint."""
    if not path.exists():
        return True
    if meta is None:
        return path.stat().st_mtime < checkpoint.stat().st_mtime
    return meta.get("checkpoint_sha256") != sha256_of(checkpoint)


def _precision(meta: dict) -> tuple:
    """How the graph a sidecar describes computes: ("float32",) or ("int8", image convolutions
    kept float32); sidecars written before that setting existed kept none."""
    if "int8" not in meta:
        return ("float32",)
    return ("int8", bool(meta["int8"].get("float_image_convs", False)))


def _wanted_precision(cfg: Config, int8: bool) -> tuple:
    return ("int8", cfg.export.int8_float_image_convs) if int8 else ("float32",)


def run(cfg: Config, work: Path, kind: str) -> Path:
    """The export-base / export-surrogate stage: `<kind>.onnx` and its sidecar, current with the
    checkpoint (converting only what is missing or stale; see the module docstring)."""
    checkpoint, path, sidecar = _paths(work, kind)
    stage = STAGES[kind]
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: missing; run the {TRAINED_BY[kind]} stage first")
    int8 = kind == "surrogate" and cfg.export.int8_surrogate
    meta = _read_sidecar(sidecar)
    same_precision = meta is not None and _precision(meta) == _wanted_precision(cfg, int8)
    if path.exists() and same_precision and _not_current(checkpoint, path, sidecar, kind) is None:
        log.info("%s: %s is current with %s, nothing to convert", stage, path.name, checkpoint.name)
        return path
    # an int8 graph is always made afresh (a found one is never adopted), and so is a float
    # graph where the sidecar says an int8 one stands, as a stale graph is
    convert = int8 or _stale(checkpoint, path, meta) or (meta is not None and "int8" in meta)
    sidecar.unlink(missing_ok=True)  # written again once the graph there has passed the check
    ds = data_stage.load(work)
    images = ds.calib.images
    checkpoint_sha = sha256_of(checkpoint)  # of the bytes the network is read from next
    net = network(checkpoint, kind)
    source = cfg.train_base.from_onnx if kind == "base" else ""
    if convert:
        origin = "imported" if source else "converted"
        tmp = path.with_suffix(".tmp.onnx")
        try:
            if source:  # the graph the old bundle served, byte for byte
                shutil.copyfile(source, tmp)
            else:
                _to_onnx(net, kind, tmp, cfg.export, images.shape[1:])
            diff, n = parity(net, tmp, kind, cfg.export, images)
            if int8:
                quantized = path.with_suffix(".int8.tmp.onnx")
                try:
                    quantize(tmp, quantized, cfg.export, ds.train.images)
                    used = min(cfg.export.int8_images, len(ds.train.images))
                    int8_check = quantization_check(tmp, quantized, cfg.export, images, used)
                    quantized.replace(tmp)
                finally:
                    quantized.unlink(missing_ok=True)
            tmp.replace(path)
        except ParityError:
            path.unlink(missing_ok=True)  # a stale graph is not left in place of a failed one
            raise
        finally:
            tmp.unlink(missing_ok=True)
    else:
        origin = "adopted"
        try:
            diff, n = parity(net, path, kind, cfg.export, images)
        except ParityError as exc:
            raise ParityError(
                f"{exc}; {path} was kept as it was, without a sidecar (no stage reads it): "
                f"remove it to convert {checkpoint.name} afresh"
            ) from exc
    meta = {
        "kind": kind,
        "origin": origin,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": checkpoint_sha,
        "graph": path.name,
        "graph_sha256": sha256_of(path),
        "parity": {
            "max_abs_diff": diff,
            "images": n,
            "tolerance": cfg.export.parity_tolerance,
        },
        "opset": _opset(path),
        "torch": torch.__version__,
    }
    if origin == "imported":
        meta["imported_from"] = str(source)
    if int8:  # parity above is the float graph's, before quantization
        meta["int8"] = int8_check | {"float_image_convs": cfg.export.int8_float_image_convs}
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    log.info(
        "%s: %s %s from %s, parity max |diff| %.2e on %d real images",
        stage,
        origin,
        path.name,
        checkpoint.name,
        diff,
        n,
    )
    return path


def _opset(path: Path) -> int:
    model = onnx.load(path, load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
