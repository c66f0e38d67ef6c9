"""What every peer framework serves in `make bench-peers`: accsmooth's certificate, the same work.

Decode the PNG (`accsmooth.images`), run the surrogate with onnxruntime (one thread, as the
server's default), turn its probabilities into the calibrated certificate with the shared rule
(`accsmooth.smoothing`, the bundle's n, alpha, sigma and shift), and answer the same JSON fields as
/certify. Needs only numpy, scipy, onnxruntime, Pillow and pydantic in the peer's environment,
with the repository on PYTHONPATH; the bundle folder is $PEER_BUNDLE.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from accsmooth.bundle import read_manifest
from accsmooth.images import decode_image
from accsmooth.smoothing import certify_from_probabilities


class Certifier:
    def __init__(self, folder: str | None = None):
        folder = Path(folder or os.environ["PEER_BUNDLE"])
        self.m = read_manifest(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        graph = self.m.graphs.surrogate
        self.session = ort.InferenceSession(
            str(folder / graph.file), options, providers=["CPUExecutionProvider"]
        )
        self.input, self.output = graph.input, graph.output
        _, self.h, self.w = self.m.input.shape

    def __call__(self, data: bytes) -> dict:
        started = time.perf_counter()
        image = decode_image(data, self.h, self.w, resize=False, max_pixels=1 << 24)
        probs = self.session.run([self.output], {self.input: image.array[None]})[0]
        p = self.m.protocol
        cert = certify_from_probabilities(probs, p.n, p.alpha, self.m.sigma, self.m.shift)[0]
        return self._fields(cert, probs[0], started)

    def batch(self, images: list[bytes]) -> list[dict]:
        """Several images' answers with one model call (for a peer that batches requests)."""
        started = time.perf_counter()
        arrays = [
            decode_image(x, self.h, self.w, resize=False, max_pixels=1 << 24).array for x in images
        ]
        probs = self.session.run([self.output], {self.input: np.stack(arrays)})[0]
        p = self.m.protocol
        certs = certify_from_probabilities(probs, p.n, p.alpha, self.m.sigma, self.m.shift)
        return [self._fields(c, row, started) for c, row in zip(certs, probs, strict=True)]

    def _fields(self, cert, probs, started: float) -> dict:
        return {
            "model": self.m.name,
            "model_version": self.m.version,
            "method": "surrogate",
            "predicted_class": cert.predicted_class,
            "label": None if cert.abstained else self.m.classes[cert.predicted_class],
            "abstained": cert.abstained,
            "certified_radius": cert.radius,
            "p_a": float(np.max(probs)),
            "p_a_lower": max(0.0, cert.p_a_lower),
            "sigma": self.m.sigma,
            "calibrated": self.m.calibration is not None,
            "latency_ms": (time.perf_counter() - started) * 1000.0,
        }
