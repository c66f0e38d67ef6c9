"""Every Prometheus metric of the service, declared here and nowhere else.

Base units (`_seconds`, `_total`). With several uvicorn workers, `python -m server` sets
PROMETHEUS_MULTIPROC_DIR before this module is imported, prometheus_client then keeps values
in per-process files, and `render()` merges them, so a scrape sees the whole server whichever
worker answers it. Gauges therefore name how they merge (`multiprocess_mode`).

Labels: `endpoint` is the route (`/certify`, `/certify/batch`, `/certify/sampled`, ...),
`model` the bundle name, `source` who asked for an audit (`request`: /certify/sampled;
`shadow`: a sampled /certify answer re-certified in the background, see `server.shadow.auditor`).
Stages: request = whole handler, queue = waiting for the model, compute = model.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "accsmooth"

# Milliseconds for /certify up to minutes for /certify/sampled, in one bucket set.
SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)
RADIUS_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)

REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by endpoint, method and status code",
    ["endpoint", "method", "status"],
)
IN_FLIGHT = Gauge(
    f"{PREFIX}_http_requests_in_flight",
    "HTTP requests being handled now",
    ["endpoint"],
    multiprocess_mode="livesum",
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_request_seconds",
    "Server-side time per certified image, from body read to answer",
    ["endpoint", "model"],
    buckets=SECONDS_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    f"{PREFIX}_queue_seconds",
    "Time an image waited for the model (micro-batch queue or audit queue)",
    ["endpoint", "model"],
    buckets=SECONDS_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    f"{PREFIX}_compute_seconds",
    "Model time for an image's batch (surrogate) or for the whole audit (Monte-Carlo)",
    ["endpoint", "model"],
    buckets=SECONDS_BUCKETS,
)
BATCH_SIZE = Histogram(
    f"{PREFIX}_batch_size",
    "Images per surrogate onnxruntime call (micro-batches)",
    ["model"],
    buckets=BATCH_BUCKETS,
)
CERTIFICATES = Counter(
    f"{PREFIX}_certificates", "Certificates answered", ["endpoint", "model", "method"]
)
ABSTENTIONS = Counter(
    f"{PREFIX}_abstentions", "Certificates that abstained", ["endpoint", "model", "method"]
)
RADIUS = Histogram(
    f"{PREFIX}_certified_radius",
    "Certified L2 radius of non-abstained certificates ([0,1] pixel units)",
    ["endpoint", "model", "method"],
    buckets=RADIUS_BUCKETS,
)
REJECTED = Counter(
    f"{PREFIX}_rejected", "Requests shed for capacity (queue full)", ["endpoint", "reason"]
)
FAST_QUEUE_DEPTH = Gauge(
    f"{PREFIX}_fast_queue_depth",
    "Images waiting in the micro-batch queue",
    ["model"],
    multiprocess_mode="livesum",
)
SAMPLED_QUEUE_DEPTH = Gauge(
    f"{PREFIX}_sampled_queue_depth",
    "Audits waiting for a worker",
    multiprocess_mode="livesum",
)
SAMPLED_RUNNING = Gauge(
    f"{PREFIX}_sampled_running", "Audits being computed now", multiprocess_mode="livesum"
)
HYBRID_QUEUE_DEPTH = Gauge(
    f"{PREFIX}_hybrid_queue_depth",
    "Hybrid Monte-Carlo fallbacks waiting for a worker",
    multiprocess_mode="livesum",
)
HYBRID_RUNNING = Gauge(
    f"{PREFIX}_hybrid_running",
    "Hybrid Monte-Carlo fallbacks being computed now",
    multiprocess_mode="livesum",
)
SAMPLES = Counter(f"{PREFIX}_noise_samples", "Noisy forward passes in audits", ["model"])
AUDITS = Counter(
    f"{PREFIX}_audits", "Monte-Carlo audits compared with the surrogate", ["model", "source"]
)
AUDIT_SAME_CLASS = Counter(
    f"{PREFIX}_audit_same_class",
    "Audits where surrogate and Monte-Carlo name the same class (or both abstain)",
    ["model", "source"],
)
AUDIT_OVERESTIMATED = Counter(
    f"{PREFIX}_audit_overestimated",
    "Audits where the served surrogate certificate claims more than Monte-Carlo",
    ["model", "source"],
)
GAP_BUCKETS = (-1.0, -0.5, -0.25, -0.1, -0.05, -0.01, 0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
AUDIT_RADIUS_GAP = Histogram(
    f"{PREFIX}_audit_radius_gap",
    "Served surrogate radius minus the Monte-Carlo radius, per audit ([0,1] pixel units)",
    ["model", "source"],
    buckets=GAP_BUCKETS,
)
SHADOW_DROPPED = Counter(
    f"{PREFIX}_shadow_audits_dropped",
    "/certify answers chosen for a shadow audit but dropped: the shadow queue was full",
    ["model"],
)
SHADOW_QUEUE_DEPTH = Gauge(
    f"{PREFIX}_shadow_queue_depth",
    "Shadow audits running or waiting",
    multiprocess_mode="livesum",
)
OVERESTIMATION_RATE = Gauge(
    f"{PREFIX}_overestimation_rate",
    "Over-estimation rate over the last ACCSMOOTH_DRIFT_WINDOW shadow audits",
    ["model"],
    multiprocess_mode="livemax",
)
DRIFT_WINDOW_AUDITS = Gauge(
    f"{PREFIX}_drift_window_audits",
    "Shadow audits in the drift window (at most ACCSMOOTH_DRIFT_WINDOW)",
    ["model"],
    multiprocess_mode="livemin",
)
DRIFTING = Gauge(
    f"{PREFIX}_model_drifting",
    "1 when the window's over-estimation rate exceeds the bundle's epsilon significantly",
    ["model"],
    multiprocess_mode="livemax",
)
HYBRID_ANSWERS = Counter(
    f"{PREFIX}_hybrid_answers",
    "mode=hybrid answers by the method that answered and the routing reason",
    ["model", "method", "reason"],
)
MODEL_INFO = Gauge(
    f"{PREFIX}_model_info",
    "1 for each loaded bundle, with its version and the execution provider in use",
    ["model", "version", "graph", "provider"],
    multiprocess_mode="max",
)
MODEL_READY = Gauge(
    f"{PREFIX}_model_ready",
    "1 when a bundle is loaded and warmed up, 0 otherwise",
    ["model"],
    multiprocess_mode="min",
)


_CHILDREN: dict = {}


def child(metric, *values: str):
    """`metric.labels(*values)`, looked up in a dict after the first call: `labels()` checks and
    locks on every call, a few microseconds each, several times per /certify request. Only for
    label values from a bounded set (endpoints, model names, status codes, reasons)."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found


# prometheus_client chose its value store when it was imported, just before this line: read
# the variable once, here, so that later changes to the environment cannot disagree with it.
_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def multiprocess_dir() -> str | None:
    """The multiprocess folder when metrics are shared between worker processes."""
    return _MULTIPROC_DIR


def render() -> tuple[bytes, str]:
    """The exposition text of every metric (merged over workers in multiprocess mode)."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=_MULTIPROC_DIR)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a stopping worker's live gauges from the merged view."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid, path=_MULTIPROC_DIR)
