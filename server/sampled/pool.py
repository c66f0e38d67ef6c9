"""The sampled pool: Monte-Carlo CERTIFY off the event loop, bounded, cancellable.

`ACCSMOOTH_SAMPLED_CONCURRENCY` threads run sampled certifications (`/certify/sampled`); at most
`ACCSMOOTH_SAMPLED_QUEUE` more wait. Beyond that `SampledPool.submit` raises `AuditQueueFull` at
once (429) instead of queueing minutes of work; its `Retry-After` is the work admitted (samples
not yet drawn) divided by the measured rate (samples per second of recent audits, or the base
model's rate measured at warm-up before any audit has finished). A slot is freed when the audit
really ends, not when its client stops waiting, so the bound holds even against clients that
hang up.

Every submitted job is an `SampledJob`: the work checks it before each batch of noisy samples
(`SampledJob.advance`), so `SampledJob.cancel` stops a queued job at once and a running one within
a batch. Cancelling is how an audit whose client has gone stops, and how the server ends its
audits a grace period after SIGTERM (`server.lifecycle`).

Each audit evaluates the base model on its own low-thread session (see `server.registry`), so
it competes with /certify for at most those threads, and runs on a worker thread niced by
`ACCSMOOTH_SAMPLED_NICE`: on Linux niceness is per thread, and with one onnxruntime thread per
audit session (the default) the whole audit, noise and model, runs on that thread, so the
scheduler gives a waking /certify thread the core at once. `make bench` measures the fast
path's p99 with and without it (`loadtests/README.md`). The hybrid fallback of
/certify?mode=hybrid runs on a second pool of the same kind (`server.sampled.hybrid`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from accsmooth.sampling import MonteCarloResult, certify
from server import metrics
from server.http.errors import AccsmoothError, AuditQueueFull, ShuttingDown
from server.registry import LoadedModel
from server.threads import lower_thread_priority

T = TypeVar("T")

log = logging.getLogger(__name__)


class SampledJob:
    """One admitted computation: its size in samples, its progress, and a cancel switch."""

    def __init__(self, samples: int = 0):
        self.samples = samples
        self.done = 0  # samples drawn so far (written by the worker thread)
        self.error: AccsmoothError | None = None
        self._stop = threading.Event()
        self._future: Future | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.samples - self.done)

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def advance(self, samples: int) -> None:
        """Called by the work before each batch: raises the cancel error once cancelled."""
        if self._stop.is_set():
            raise self.error
        self.done += samples

    def cancel(self, error: AccsmoothError) -> None:
        """Stop the job: at once if it waits, before its next batch if it runs; its waiter
        gets `error`. Safe from any thread; the first cancel's error wins."""
        if self._stop.is_set():
            return
        self.error = error
        self._stop.set()
        if self._future is not None:
            self._future.cancel()  # only succeeds while the job still waits for a worker


class SampledPool:
    """A bounded, cancellable thread pool for long computations, with honest queue accounting.

    `full` builds the error raised when the pool is full (429 AuditQueueFull by default);
    `gauges` count the jobs waiting and running."""

    def __init__(
        self,
        concurrency: int,
        queue_size: int,
        niceness: int = 0,
        *,
        name: str = "audit",
        full: Callable[[str, int], AccsmoothError] | None = None,
        gauges: tuple = (metrics.SAMPLED_QUEUE_DEPTH, metrics.SAMPLED_RUNNING),
    ):
        self.concurrency = concurrency
        self.capacity = concurrency + queue_size
        self.name = name
        self._full = full or self._queue_full
        self._waiting, self._running = gauges
        self._executor = ThreadPoolExecutor(
            concurrency,
            thread_name_prefix=name,
            initializer=lower_thread_priority,
            initargs=(niceness,),
        )
        self._jobs: set[SampledJob] = set()  # waiting + running; touched on the event loop only
        self._durations: deque[float] = deque(maxlen=16)
        self._rates: deque[float] = deque(maxlen=16)  # samples per second of recent jobs
        self._closed: AccsmoothError | None = None

    @property
    def admitted(self) -> int:
        return len(self._jobs)

    def retry_after(self, rate_hint: float = 0.0) -> int:
        """Seconds until the admitted work is done: samples not yet drawn / measured rate;
        jobs without a sample count fall back on recent durations."""
        rate = float(np.median(self._rates)) if self._rates else rate_hint
        remaining = sum(job.remaining for job in self._jobs)
        if remaining and rate > 0:
            return max(1, math.ceil(remaining / (rate * self.concurrency)))
        typical = float(np.median(self._durations)) if self._durations else 5.0
        waves = max(1, len(self._jobs) - self.concurrency + 1) / self.concurrency
        return max(1, math.ceil(typical * waves))

    def _queue_full(self, detail: str, retry_after: int) -> AccsmoothError:
        metrics.REJECTED.labels("/certify/sampled", "audit_queue_full").inc()
        return AuditQueueFull(
            f"{detail} (ACCSMOOTH_SAMPLED_CONCURRENCY={self.concurrency},"
            f" ACCSMOOTH_SAMPLED_QUEUE={self.capacity - self.concurrency}); retry later",
            retry_after=retry_after,
        )

    def submit(
        self, fn: Callable[[], T], job: SampledJob | None = None, *, rate_hint: float = 0.0
    ) -> asyncio.Future:
        """Admit `fn` now or raise (pool full: `full`; closed: ShuttingDown); await the result
        for (fn's result, seconds queued, seconds computing). `job` is the SampledJob that `fn`
        reports its progress to; `rate_hint` the samples per second expected before any job
        has been measured. Call on the event loop."""
        if self._closed is not None:
            raise self._closed
        job = job or SampledJob()
        if len(self._jobs) >= self.capacity:
            after = self.retry_after(rate_hint)
            raise self._full(f"{len(self._jobs)} {self.name}s running or queued", after)
        loop = asyncio.get_running_loop()
        result = loop.create_future()
        result.add_done_callback(_retrieve)  # a waiter that has gone must not log its error
        self._jobs.add(job)
        self._waiting.inc()
        queued_at = time.perf_counter()

        def work():
            started = time.perf_counter()
            self._waiting.dec()
            self._running.inc()
            try:
                if job.cancelled:
                    raise job.error
                return fn(), started - queued_at, time.perf_counter() - started
            finally:
                self._running.dec()

        job._future = self._executor.submit(work)
        job._future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._finish, job, f, result)
        )
        return result

    def _finish(self, job: SampledJob, future: Future, result: asyncio.Future) -> None:
        self._jobs.discard(job)
        try:
            value = future.result()
        except CancelledError:  # cancelled while waiting: it never ran
            self._waiting.dec()
            outcome: BaseException | tuple = job.error or ShuttingDown("the audit was cancelled")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            outcome = exc
        else:
            outcome = value
            self._durations.append(value[1] + value[2])
            if job.samples and value[2] > 0:
                self._rates.append(job.samples / value[2])
        if result.done():
            return
        if isinstance(outcome, BaseException):
            result.set_exception(outcome)
        else:
            result.set_result(outcome)

    def cancel_all(self, error: AccsmoothError) -> int:
        """Refuse new work with `error` and cancel every admitted job; returns how many."""
        self._closed = error
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel(error)
        return len(jobs)

    def close(self, error: AccsmoothError) -> None:
        """Refuse new work with `error`; admitted jobs go on."""
        self._closed = error

    def shutdown(self) -> None:
        for job in list(self._jobs):
            job.cancel(ShuttingDown("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def monte_carlo(
    model: LoadedModel,
    image: np.ndarray,
    *,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int,
    job: SampledJob | None = None,
) -> MonteCarloResult:
    """Cohen et al.'s CERTIFY on the bundle's base model; noise streamed in `batch_size` chunks.
    With a `job`, progress is reported before each batch and a cancelled job stops there."""
    m = model.manifest
    predict = model.base
    if job is not None:

        def predict(batch: np.ndarray) -> np.ndarray:
            job.advance(len(batch))
            return model.base(batch)

    result = certify(
        predict,
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
