"""Service configuration: every field is an `ACCSMOOTH_<NAME>` environment variable.

Settings are built once, by whoever starts the service (`python -m server`, the uvicorn
factory `server.http.app:app_from_env`, or a test), and passed to `create_app(settings)`; nothing
reads the environment at import time. Validators fail fast on nonsense values, so a typo in a
deployment stops the process at start instead of surfacing as odd behaviour under load.

    ACCSMOOTH_MODELS_DIR=models ACCSMOOTH_MAX_BATCH=32 python -m server --port 8000

`python -m server.settings` prints, as JSON, the settings this environment gives and the
onnxruntime session options the server builds from them (the load tests read them this way).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from accsmooth.runtime import PREFERENCE, RuntimeOptions


class Settings(BaseSettings):
    """All knobs of the service, with units in the field descriptions."""

    model_config = SettingsConfigDict(env_prefix="ACCSMOOTH_", frozen=True, extra="ignore")

    # Bundles
    models_dir: Path = Field(Path("models"), description="folder of model bundles")
    default_model: str | None = Field(
        None, description="bundle served when a request names none (default: first by name)"
    )

    # Fast path (/certify): micro-batching
    max_batch: int = Field(32, ge=1, le=1024, description="images per onnxruntime call")
    # a probe graph's image is 1 + K network passes: its batches hold fewer images, so that a
    # 256-probe bundle holds 0.3 GB per worker instead of 1.0 (docs/results.md); 1 + 16 probes
    # still fit 32 images a call
    max_passes_per_call: int = Field(
        1024, ge=1, description="network passes per surrogate call, probe graphs' included"
    )
    # 0: batches form only while the model is busy. Measured with wrk at 16 connections, a
    # wait of 1 ms for stragglers cost 30% of the rate (loadtests/README.md)
    max_queue_delay_ms: float = Field(
        0.0, ge=0.0, le=100.0, description="extra wait for stragglers once batches form (ms)"
    )
    max_queue: int = Field(512, ge=1, description="images waiting for the surrogate; 503 beyond")
    inline_max_ms: float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="run a batch on the event loop when it is expected to take at most this (ms)",
    )
    max_in_flight: int = Field(
        256, ge=1, description="/certify and /certify/batch requests in progress; 503 beyond"
    )

    # Audit path (/certify/sampled)
    max_samples: int = Field(100_000, ge=1, description="cap on n (and n0) per audit")
    sampled_concurrency: int = Field(1, ge=1, le=64, description="audits computed at once")
    sampled_queue: int = Field(4, ge=0, description="audits waiting for a worker; 429 beyond")
    sampled_threads: int = Field(1, ge=0, description="onnxruntime threads per audit session")
    sampled_nice: int = Field(
        10, ge=0, le=19, description="niceness added to audit threads (0: none), so /certify wins"
    )
    sampled_batch_size: int = Field(256, ge=1, description="default noisy copies per forward pass")
    max_sampled_batch_size: int = Field(4096, ge=1, description="cap on the batch_size query")

    graceful_timeout_s: float = Field(
        10.0,
        ge=0.0,
        le=3600.0,
        description="after SIGTERM, seconds audits may still run before they are cancelled (503)",
    )

    # Shadow audits and drift alarm (server.shadow.auditor)
    audit_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="fraction of /certify answers re-certified by Monte-Carlo"
    )
    audit_queue: int = Field(8, ge=1, description="shadow audits running or waiting; drop beyond")
    audit_nice: int = Field(10, ge=0, le=19, description="niceness added to the shadow thread")
    audit_recent: int = Field(256, ge=1, le=100_000, description="results kept for GET /audits")
    drift_window: int = Field(200, ge=1, description="last W shadow audits tested for drift")
    drift_level: float = Field(
        0.01, gt=0.0, lt=0.5, description="significance of the one-sided binomial drift test"
    )

    # Hybrid certification (/certify?mode=hybrid, server.sampled.hybrid)
    hybrid_margin: float = Field(
        0.05, ge=0.0, lt=0.5, description="surrogate answers when its bound is this far from 1/2"
    )
    hybrid_budget_ms: float = Field(
        100.0, gt=0.0, le=600_000.0, description="Monte-Carlo fallback time budget per image (ms)"
    )
    hybrid_concurrency: int = Field(1, ge=1, le=64, description="fallbacks computed at once")
    hybrid_queue: int = Field(8, ge=0, description="fallbacks waiting; 503 beyond")

    # Input limits
    max_body_bytes: int = Field(8 << 20, ge=1024, description="request body limit (bytes); 413")
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="request line and headers must arrive within (s); 408"
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="the body must arrive within, after the headers (s)"
    )
    max_header_bytes: int = Field(
        65536, ge=1024, le=1 << 24, description="request line and headers limit (bytes); 431"
    )
    max_image_pixels: int = Field(
        16_777_216, ge=1, description="decoded width*height limit (decompression bombs)"
    )
    decode_pixel_budget: int = Field(
        16_777_216, ge=1, description="pixels of big images decoded at once, off the event loop"
    )

    # Security
    api_key: SecretStr | None = Field(None, description="bearer token for /certify/sampled")
    protect_certify: bool = Field(False, description="also require the API key on /certify")
    protect_hybrid: bool = Field(
        True, description="require the API key on /certify?mode=hybrid (its Monte-Carlo is costly)"
    )

    # onnxruntime
    providers: Annotated[tuple[str, ...], NoDecode] = Field(
        PREFERENCE, description="wanted providers, in order"
    )
    # 1: the surrogate is a small network; a second thread gains nothing at batch 1 and spins
    # between calls on the core the event loop needs (measured: loadtests/README.md)
    intra_op_threads: int = Field(1, ge=0, description="fast-path threads per operator (0: auto)")
    inter_op_threads: int = Field(1, ge=1, description="operators run in parallel")
    trt_engine_cache_dir: Path | None = Field(None, description="TensorRT engine cache folder")
    trt_fp16: bool = Field(False, description="let TensorRT run in half precision")

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # set by `python -m server` for its workers when it starts several (server.readiness)
    ready_dir: Path | None = Field(
        None, description="folder where each worker marks itself ready (set by python -m server)"
    )

    @field_validator("api_key")
    @classmethod
    def _empty_key_means_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value):
        """Accept `TensorrtExecutionProvider,CPUExecutionProvider` as well as a JSON list."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
            return tuple(p.strip() for p in value if p.strip())
        return value

    def fast_runtime(self) -> RuntimeOptions:
        """Sessions of the surrogate (/certify): all the threads they want."""
        return RuntimeOptions(
            providers=self.providers,
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            trt_engine_cache_dir=str(self.trt_engine_cache_dir or "") or None,
            trt_fp16=self.trt_fp16,
        )

    def sampled_runtime(self) -> RuntimeOptions:
        """Sessions of the base model (audits): few threads, so audits cannot starve /certify."""
        return RuntimeOptions(
            providers=self.providers,
            intra_op_threads=self.sampled_threads,
            inter_op_threads=1,
            trt_engine_cache_dir=str(self.trt_engine_cache_dir or "") or None,
            trt_fp16=self.trt_fp16,
        )


def describe(settings: Settings) -> dict:
    """`settings` as JSON values (the API key masked), with the session options built from them."""
    return {
        "settings": settings.model_dump(mode="json"),
        "fast_runtime": asdict(settings.fast_runtime()),
        "sampled_runtime": asdict(settings.sampled_runtime()),
    }


if __name__ == "__main__":
    print(json.dumps(describe(Settings()), indent=1))
