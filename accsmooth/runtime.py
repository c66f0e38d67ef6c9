"""onnxruntime sessions: execution-provider choice (TensorRT -> CUDA -> CPU) and thread settings.

Shared by the server and by the exporter's labelling, calibration and evaluation stages.
Providers are chosen by availability in this onnxruntime build: the `onnxruntime` wheel has
only the CPU provider, `onnxruntime-gpu` adds CUDA and TensorRT.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built. Thread counts of 0 let onnxruntime pick (one per core)."""

    providers: tuple[str, ...] = PREFERENCE  # wanted, in order; unavailable ones are skipped
    intra_op_threads: int = 0  # threads inside one operator
    inter_op_threads: int = 1  # operators run in parallel (sequential graphs: 1)
    trt_engine_cache_dir: str | None = None  # TensorRT engine cache (saves minutes per start)
    trt_fp16: bool = False  # let TensorRT run in half precision


def choose_providers(options: RuntimeOptions) -> list:
    """The wanted providers this build has, each with its options, CPU always last."""
    available = set(ort.get_available_providers())
    chosen: list = []
    for name in options.providers:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            trt = {"trt_fp16_enable": options.trt_fp16}
            if options.trt_engine_cache_dir:
                Path(options.trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
                trt |= {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": options.trt_engine_cache_dir,
                }
            chosen.append((name, trt))
        else:
            chosen.append(name)
    if "CPUExecutionProvider" not in [c if isinstance(c, str) else c[0] for c in chosen]:
        chosen.append("CPUExecutionProvider")
    return chosen


def make_session(path: str | os.PathLike, options: RuntimeOptions | None = None):
    """An InferenceSession on the best available provider; `.get_providers()[0]` is the one used."""
    options = options or RuntimeOptions()
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=choose_providers(options))
    log.info("loaded %s on %s", Path(path).name, session.get_providers()[0])
    return session


class OnnxPredictor:
    """A callable [B,3,H,W] float32 -> [B,K] output for one single-input, single-output graph."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.provider = session.get_providers()[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]
