"""The micro-batcher: concurrent /certify images share one onnxruntime call.

One asyncio task per model owns the model. It sleeps until an image arrives, takes everything
already queued (up to `max_batch`) and runs the batch on a dedicated thread, so the event loop
keeps accepting and decoding requests meanwhile. Batches therefore form *while the model is
busy*: a lone request on an idle server is taken at once and never waits for a timer.

`max_delay` only applies once concurrency has been seen (the batch just taken, or the one before
it, held more than one image): then the worker waits up to `max_delay` for stragglers before
running a batch that is not full. The queue is bounded: `submit` raises `Overloaded` (503)
rather than letting latency grow without bound.

    batcher = MicroBatcher(process, max_batch=32, max_delay=0.001, max_queue=512, name="m")
    await batcher.start(); result = await batcher.submit(image, meta); await batcher.stop()

`process(images [B,...], metas) -> list of B results` runs on the batcher's thread, or on the
event loop itself when the batch is expected to take at most `inline_max` seconds (the last
batches' compute time per image, times the batch size): for a model of a tenth of a
millisecond, handing the batch to a thread and its result back costs more than the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server import metrics
from server.http.errors import InferenceFailed, Overloaded

log = logging.getLogger(__name__)

Process = Callable[[np.ndarray, list[Any]], Sequence[Any]]


@dataclass
class _Item:
    image: np.ndarray
    meta: Any
    future: asyncio.Future
    endpoint: str
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Groups submitted images into batches for `process`; one model call at a time."""

    def __init__(
        self,
        process: Process,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        name: str,
        inline_max: float = 0.0,
    ):
        self.process = process
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.name = name
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._last_size = 0
        self._busy = False  # a batch is running (on the loop or on the batcher's thread)
        self.inline_max = inline_max
        self._per_image = None  # seconds of compute per image, smoothed; None: not measured yet
        self._depth = metrics.FAST_QUEUE_DEPTH.labels(name)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Overloaded("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, image: np.ndarray, meta: Any = None, endpoint: str = "/certify", *, alone=False
    ):
        """Queue one image; returns its result from `process`. Overloaded when the queue is full.

        `alone`: the caller knows no other request is in the server (the HTTP protocol's fast
        lane counts them); then, with nothing queued or running and a model cheap enough to
        run on the event loop, the image runs at once as a batch of one, without the hand-off
        to the batcher's task (about 9 us of a 0.3 ms request). Nothing could have joined its
        batch: no other request exists to be decoded meanwhile."""
        if self._task is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if alone and not self._queue and not self._busy and self._inline(1):
            return self._run_now(image, meta, endpoint)
        if len(self._queue) >= self.max_queue:
            metrics.REJECTED.labels(endpoint, "fast_queue_full").inc()
            raise Overloaded(
                f"model {self.name!r}: {len(self._queue)} images already queued"
                f" (ACCSMOOTH_MAX_QUEUE={self.max_queue}); retry shortly"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(image, meta, future, endpoint))
        self._depth.inc()
        self._wakeup.set()
        return await future

    def _take(self, batch: list[_Item]) -> None:
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            self._depth.dec()
            if not item.future.done():  # skip requests whose client went away
                batch.append(item)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Item] = []
            self._take(batch)
            if self.max_delay > 0 and (len(batch) > 1 or self._last_size > 1):
                await self._gather_stragglers(batch)
            if not batch:
                continue
            self._last_size = len(batch)
            await self._run_batch(loop, batch)

    async def _gather_stragglers(self, batch: list[_Item]) -> None:
        deadline = time.perf_counter() + self.max_delay
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            self._take(batch)

    def _inline(self, size: int) -> bool:
        """Whether a batch of `size` is expected to take at most `inline_max` of compute."""
        return self._per_image is not None and self._per_image * size <= self.inline_max

    def _failed(self, size: int, exc: Exception) -> InferenceFailed:
        log.error("model %s: batch of %d failed", self.name, size, exc_info=exc)
        return InferenceFailed(f"model {self.name!r}: inference failed: {exc}")

    def _ran(self, started: float, size: int) -> float:
        """Record a batch of `size` that started at `started`; returns its compute time."""
        compute = time.perf_counter() - started
        per_image = compute / size
        self._per_image = (
            per_image if self._per_image is None else (0.8 * self._per_image + 0.2 * per_image)
        )
        metrics.child(metrics.BATCH_SIZE, self.name).observe(size)
        return compute

    def _run_now(self, image: np.ndarray, meta: Any, endpoint: str):
        """A lone request's image as a batch of one, on the event loop, without queueing."""
        started = time.perf_counter()
        try:
            result = self.process(image[None], [meta])[0]
        except Exception as exc:  # noqa: BLE001 - the request gets a domain error
            raise self._failed(1, exc) from exc
        compute = self._ran(started, 1)
        metrics.child(metrics.QUEUE_SECONDS, endpoint, self.name).observe(0.0)
        metrics.child(metrics.COMPUTE_SECONDS, endpoint, self.name).observe(compute)
        return result

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        images = np.stack([item.image for item in batch])
        metas = [item.meta for item in batch]
        self._busy = True
        try:
            if self._inline(len(batch)):
                results = self.process(images, metas)
            else:
                results = await loop.run_in_executor(self._executor, self.process, images, metas)
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            error = self._failed(len(batch), exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._busy = False
        compute = self._ran(started, len(batch))
        for item, result in zip(batch, results, strict=True):
            metrics.child(metrics.QUEUE_SECONDS, item.endpoint, self.name).observe(
                started - item.queued_at
            )
            metrics.child(metrics.COMPUTE_SECONDS, item.endpoint, self.name).observe(compute)
            if not item.future.done():
                item.future.set_result(result)
