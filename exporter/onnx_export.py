"""ONNX conversion with a parity check: the graphs the server runs are the networks trained.

Pinned exporter path: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, opset from
the config, one input `images` [B,3,H,W] with a dynamic batch axis. The base graph outputs
`logits`; the surrogate graph ends in a softmax and outputs `probabilities`. After writing, the
graph is run in onnxruntime on real images and compared with torch: the export fails when the
max abs difference exceeds the tolerance (1e-4 by default).

Who converts: the training stage that made a network (`train_base`, `train_surrogate`) saves
it in both forms, `<kind>.pt` to resume training and `<kind>.onnx` to sample and serve, through
`write_graph`; the later stages only read the graph, through that stage's `graph(work)`
(`current_graph`), which refuses a graph older than its checkpoint. The conversion cannot wait
for the export stage: targets, calibrate and evaluate sample the very graph the bundle ships
(their Monte-Carlo folders are stamped with its sha256), so it must exist before they run.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from exporter import models
from exporter.config import ExportConfig

log = logging.getLogger(__name__)

OUTPUT_NAMES = {"base": "logits", "surrogate": "probabilities"}


class ParityError(RuntimeError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


def export(checkpoint: Path, kind: str, out: Path, cfg: ExportConfig, images: np.ndarray) -> float:
    """Write `kind` ("base"|"surrogate") from `checkpoint` to `out`; returns the parity max diff."""
    net = models.from_checkpoint(checkpoint)
    if kind == "surrogate":
        net = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    example = torch.zeros(1, *images.shape[1:])
    tmp = out.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=[OUTPUT_NAMES[kind]],
            dynamic_axes={"images": {0: "batch"}, OUTPUT_NAMES[kind]: {0: "batch"}},
            opset_version=cfg.opset,
            dynamo=False,
        )
    x = images[: cfg.parity_images].astype(np.float32) / np.float32(255.0)
    with torch.no_grad():
        expected = net(torch.as_tensor(x)).numpy()
    got = OnnxPredictor(make_session(tmp, RuntimeOptions(providers=("CPUExecutionProvider",))))(x)
    diff = float(np.abs(got - expected).max())
    if not diff <= cfg.parity_tolerance:
        tmp.unlink()
        raise ParityError(
            f"{out.name}: onnxruntime differs from torch by {diff:.2e} "
            f"> tolerance {cfg.parity_tolerance:.0e} on {len(x)} images"
        )
    tmp.replace(out)
    log.info("export %s -> %s: parity max |diff| %.2e on %d real images", kind, out, diff, len(x))
    return diff


def _is_current(checkpoint: Path, graph: Path) -> bool:
    return graph.exists() and graph.stat().st_mtime >= checkpoint.stat().st_mtime


def write_graph(
    checkpoint: Path, kind: str, graph: Path, cfg: ExportConfig, images: np.ndarray
) -> Path:
    """`graph` converted from `checkpoint` (parity-checked on `images`), unless it is already
    there and not older than the checkpoint (a rerun of a finished stage converts nothing)."""
    if not _is_current(checkpoint, graph):
        export(checkpoint, kind, graph, cfg, images)
    return graph


def current_graph(checkpoint: Path, graph: Path, stage: str) -> Path:
    """`graph`, when it exists and is not older than `checkpoint`; else FileNotFoundError naming
    the stage that writes both (rerun on a finished network, it only converts)."""
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: missing; run the {stage} stage first")
    if not _is_current(checkpoint, graph):
        state = "missing" if not graph.exists() else f"older than {checkpoint.name}"
        raise FileNotFoundError(
            f"{graph}: {state}; rerun the {stage} stage (a finished network is only converted)"
        )
    return graph
