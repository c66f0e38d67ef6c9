"""ONNX conversion with a parity check: the graphs the server runs are the networks trained.

Pinned exporter path: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, opset from
the config, one input `images` [B,3,H,W] with a dynamic batch axis. The base graph outputs
`logits`; the surrogate graph ends in a softmax and outputs `probabilities`. After writing, the
graph is run in onnxruntime on real images and compared with torch: the export fails when the
max abs difference exceeds the tolerance (1e-4 by default).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from exporter.config import ExportConfig
from exporter.train_base import build_from_checkpoint

log = logging.getLogger(__name__)

OUTPUT_NAMES = {"base": "logits", "surrogate": "probabilities"}


class ParityError(RuntimeError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


def export(checkpoint: Path, kind: str, out: Path, cfg: ExportConfig, images: np.ndarray) -> float:
    """Write `kind` ("base"|"surrogate") from `checkpoint` to `out`; returns the parity max diff."""
    net = build_from_checkpoint(checkpoint)
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


def ensure_onnx(work: Path, kind: str, cfg: ExportConfig, images: np.ndarray) -> Path:
    """`<work>/<kind>.onnx`, (re)exported when missing or older than `<work>/<kind>.pt`."""
    pt, onnx_path = work / f"{kind}.pt", work / f"{kind}.onnx"
    if not pt.exists():
        raise FileNotFoundError(f"{pt}: missing; run the train-{kind} stage first")
    if not onnx_path.exists() or onnx_path.stat().st_mtime < pt.stat().st_mtime:
        export(pt, kind, onnx_path, cfg, images)
    return onnx_path
