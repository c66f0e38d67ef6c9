"""Triton Inference Server (the binary bundled with nvidia-pytriton 0.7) serving `core.Certifier`
through PyTriton: model `accsmooth`, one instance, max batch 16 with Triton's dynamic batcher
(`dynamic_batching {}`, no queue delay), the model call made once per batch.

    python -m loadtests.peer_apps.pytriton_app PORT

Triton's own HTTP frontend answers on 127.0.0.1:PORT (gRPC on PORT+1, metrics on PORT+2):
POST /v2/models/accsmooth/infer with the input `image`, a BYTES tensor of shape [1, 1] holding
the PNG (sent with the binary-data extension, as tritonclient does by default), and one output
tensor per field of the certificate's JSON (strings as BYTES, `label` empty when abstained).
"""

import contextlib
import os
import signal
import sys
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from loadtests.peer_apps.core import Certifier

# PyTriton's Python backend stub must load this interpreter's libpython, not the system's (which
# fails with an RLock attribute error); tritonserver inherits this environment.
os.environ["LD_LIBRARY_PATH"] = ":".join(
    x for x in (sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")) if x
)

FIELDS = {
    "model": np.bytes_,
    "model_version": np.bytes_,
    "method": np.bytes_,
    "predicted_class": np.int64,
    "label": np.bytes_,
    "abstained": np.bool_,
    "certified_radius": np.float64,
    "p_a": np.float64,
    "p_a_lower": np.float64,
    "sigma": np.float64,
    "calibrated": np.bool_,
    "latency_ms": np.float64,
}


def infer_function(certifier: Certifier):
    @batch
    def infer(image: np.ndarray) -> dict:
        answers = certifier.batch([bytes(x[0]) for x in image])
        out = {}
        for name, dtype in FIELDS.items():
            values = [a[name] for a in answers]
            if dtype is np.bytes_:
                values = [(v or "").encode() for v in values]
                out[name] = np.array(values, dtype=object)[:, None]
            else:
                out[name] = np.array(values, dtype=dtype)[:, None]
        return out

    return infer


def main(port: int) -> None:
    # SIGTERM as Ctrl-C: leaving the `with` stops Triton and removes PyTriton's workspace.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=port + 1,
        metrics_port=port + 2,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="accsmooth",
            infer_func=infer_function(Certifier()),
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name=k, dtype=v, shape=(1,)) for k, v in FIELDS.items()],
            config=ModelConfig(max_batch_size=16, batcher=DynamicBatcher()),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(int(sys.argv[1]))
