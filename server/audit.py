"""The audit worker pool: Monte-Carlo CERTIFY off the event loop, bounded, with load shedding.

`ACCSMOOTH_SAMPLED_CONCURRENCY` threads run audits; at most `ACCSMOOTH_SAMPLED_QUEUE` more
wait. Beyond that `AuditPool.submit` raises `AuditQueueFull` at once (429 with a Retry-After
estimated from recent audit durations) instead of queueing minutes of work. A slot is freed
when the audit really ends, not when its client stops waiting, so the bound holds even
against clients that hang up. Each audit evaluates the base model on its own low-thread
session (see `server.registry`), so it competes with /certify for at most those threads, and
runs on a worker thread niced by `ACCSMOOTH_SAMPLED_NICE`: on Linux niceness is per thread,
and with one onnxruntime thread per audit session (the default) the whole audit, noise and
model, runs on that thread, so the scheduler gives a waking /certify thread the core at once.
`make bench` measures the fast path's p99 with and without it (`loadtests/README.md`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from server import metrics
from server.errors import AuditQueueFull
from server.registry import LoadedModel
from server.sampling import MonteCarloResult, certify

T = TypeVar("T")

log = logging.getLogger(__name__)


def lower_thread_priority(niceness: int) -> None:
    """Thread initializer: add `niceness` to this thread's nice value (Linux: this thread only)."""
    if niceness <= 0:
        return
    try:
        os.nice(niceness)
    except OSError as exc:  # not permitted here: audits then run at normal priority
        log.warning("audit workers: cannot lower their priority: %s", exc)


class AuditPool:
    """A bounded thread pool for long computations, with honest queue accounting."""

    def __init__(self, concurrency: int, queue_size: int, niceness: int = 0):
        self.concurrency = concurrency
        self.capacity = concurrency + queue_size
        self._executor = ThreadPoolExecutor(
            concurrency, thread_name_prefix="audit",
            initializer=lower_thread_priority, initargs=(niceness,),
        )  # fmt: skip
        self._admitted = 0  # waiting + running; touched on the event loop only
        self._durations: deque[float] = deque(maxlen=16)

    @property
    def admitted(self) -> int:
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: queued work / workers at the recent pace."""
        typical = float(np.median(self._durations)) if self._durations else 5.0
        waves = max(1, self._admitted - self.concurrency + 1) / self.concurrency
        return max(1, math.ceil(typical * waves))

    def submit(self, fn: Callable[[], T]) -> asyncio.Future:
        """Admit `fn` now or raise AuditQueueFull (429); await the result for
        (fn's result, seconds queued, seconds computing). Call on the event loop."""
        if self._admitted >= self.capacity:
            metrics.REJECTED.labels("/certify/sampled", "audit_queue_full").inc()
            raise AuditQueueFull(
                f"{self._admitted} audits running or queued (ACCSMOOTH_SAMPLED_CONCURRENCY="
                f"{self.concurrency}, ACCSMOOTH_SAMPLED_QUEUE={self.capacity - self.concurrency});"
                " retry later",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        self._admitted += 1
        metrics.SAMPLED_QUEUE_DEPTH.inc()
        queued_at = time.perf_counter()

        def job():
            started = time.perf_counter()
            metrics.SAMPLED_QUEUE_DEPTH.dec()
            metrics.SAMPLED_RUNNING.inc()
            try:
                return fn(), started - queued_at, time.perf_counter() - started
            finally:
                metrics.SAMPLED_RUNNING.dec()

        future = self._executor.submit(job)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._release, f))
        return asyncio.wrap_future(future)

    def _release(self, future) -> None:
        self._admitted -= 1
        if future.cancelled():
            metrics.SAMPLED_QUEUE_DEPTH.dec()
        elif future.exception() is None:
            self._durations.append(sum(future.result()[1:]))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def monte_carlo(
    model: LoadedModel,
    image: np.ndarray,
    *,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int,
) -> MonteCarloResult:
    """Cohen et al.'s CERTIFY on the bundle's base model; noise streamed in `batch_size` chunks."""
    m = model.manifest
    result = certify(
        model.base,
        image,
        sigma=m.sigma,
        num_classes=m.num_classes,
        n0=n0,
        n=n,
        alpha=alpha,
        batch_size=batch_size,
        rng=np.random.default_rng(seed),
    )
    metrics.SAMPLES.labels(model.name).inc(n0 + n)
    return result
