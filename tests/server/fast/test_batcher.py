"""The micro-batcher: no wait when idle, batches while busy, bounded queue, failures answered."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.fast.batcher import MicroBatcher
from server.http.errors import InferenceFailed, Overloaded


class Recorder:
    """A `process` that records batch sizes, optionally blocks, and echoes image sums."""

    def __init__(self, gate: threading.Event | None = None):
        self.sizes: list[int] = []
        self.gate = gate

    def __call__(self, images: np.ndarray, metas: list) -> list:
        if self.gate is not None:
            self.gate.wait(5)
        self.sizes.append(len(images))
        return [(float(x.sum()), meta) for x, meta in zip(images, metas, strict=True)]


def run(coro):
    return asyncio.run(coro)


async def started(process, **kw) -> MicroBatcher:
    options = {"max_batch": 8, "max_delay": 0.0, "max_queue": 64, "name": "test"} | kw
    batcher = MicroBatcher(process, **options)
    await batcher.start()
    return batcher


def test_a_lone_request_does_not_wait_for_the_batching_delay():
    async def scenario():
        batcher = await started(Recorder(), max_delay=0.5)
        t0 = time.perf_counter()
        result = await batcher.submit(np.ones((2, 2), np.float32), "m")
        elapsed = time.perf_counter() - t0
        await batcher.stop()
        return result, elapsed

    result, elapsed = run(scenario())
    assert result == (4.0, "m")
    assert elapsed < 0.25  # half the delay: it was not waited for


def test_requests_arriving_while_the_model_is_busy_form_one_batch():
    gate = threading.Event()
    recorder = Recorder(gate)

    async def scenario():
        batcher = await started(recorder, max_batch=16)
        first = asyncio.create_task(batcher.submit(np.zeros(1, np.float32), 0))
        await asyncio.sleep(0.05)  # the first batch (of 1) is now running, blocked on the gate
        rest = [
            asyncio.create_task(batcher.submit(np.full(1, i, np.float32), i)) for i in range(10)
        ]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = run(scenario())
    assert recorder.sizes == [1, 10]
    assert [meta for _, meta in results] == [0, *range(10)]  # each caller gets its own row
    assert [value for value, _ in results[1:]] == [float(i) for i in range(10)]


def test_batches_never_exceed_max_batch():
    gate = threading.Event()
    recorder = Recorder(gate)

    async def scenario():
        batcher = await started(recorder, max_batch=4)
        tasks = [asyncio.create_task(batcher.submit(np.ones(1, np.float32), i)) for i in range(11)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks)
        await batcher.stop()

    run(scenario())
    assert max(recorder.sizes) <= 4 and sum(recorder.sizes) == 11


def test_a_full_queue_refuses_with_overloaded():
    gate = threading.Event()

    async def scenario():
        batcher = await started(Recorder(gate), max_batch=1, max_queue=2)
        running = asyncio.create_task(batcher.submit(np.ones(1, np.float32)))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher.submit(np.ones(1, np.float32))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="2 images already queued"):
            await batcher.submit(np.ones(1, np.float32))
        gate.set()
        await asyncio.gather(running, *queued)
        await batcher.stop()

    run(scenario())


def test_a_failing_model_answers_every_waiting_request_with_an_error():
    def broken(images, metas):
        raise RuntimeError("boom")

    async def scenario():
        batcher = await started(broken)
        results = await asyncio.gather(
            *(batcher.submit(np.ones(1, np.float32)) for _ in range(3)), return_exceptions=True
        )
        await batcher.stop()
        return results

    results = run(scenario())
    assert all(isinstance(r, InferenceFailed) and "boom" in r.detail for r in results)


def test_stragglers_join_a_batch_once_concurrency_is_seen():
    recorder = Recorder()

    async def scenario():
        batcher = await started(recorder, max_batch=8, max_delay=0.2)
        first = [asyncio.create_task(batcher.submit(np.ones(1, np.float32))) for _ in range(2)]
        await asyncio.sleep(0.02)  # arrive within the delay after a batch of 2 was taken
        late = [asyncio.create_task(batcher.submit(np.ones(1, np.float32))) for _ in range(2)]
        await asyncio.gather(*first, *late)
        await batcher.stop()

    run(scenario())
    assert recorder.sizes == [4]


class ThreadRecorder(Recorder):
    """A Recorder that also notes which thread ran each batch."""

    def __init__(self):
        super().__init__()
        self.threads: list[str] = []

    def __call__(self, images, metas):
        self.threads.append(threading.current_thread().name)
        return super().__call__(images, metas)


@pytest.mark.parametrize(("inline_max", "inline_after_first"), [(1.0, True), (0.0, False)])
def test_quick_batches_run_on_the_event_loop_once_measured_as_quick(inline_max, inline_after_first):
    recorder = ThreadRecorder()

    async def scenario():
        batcher = await started(recorder, inline_max=inline_max)
        for _ in range(3):
            assert await batcher.submit(np.ones((2, 2), np.float32), "m") == (4.0, "m")
        await batcher.stop()

    run(scenario())
    loop_thread = threading.current_thread().name
    assert recorder.threads[0] != loop_thread  # not measured yet: on the batcher's thread
    assert all((t == loop_thread) == inline_after_first for t in recorder.threads[1:])


@pytest.mark.parametrize("alone", [False, True])  # through the queue, or run at once
def test_a_failing_inline_batch_answers_every_request(alone):
    calls = []

    def process(images, metas):
        calls.append(len(images))
        if len(calls) > 1:
            raise RuntimeError("boom")
        return [(0.0, m) for m in metas]

    async def scenario():
        batcher = await started(process, inline_max=1.0)
        await batcher.submit(np.ones((2, 2), np.float32), "m")
        with pytest.raises(InferenceFailed, match="boom"):
            await batcher.submit(np.ones((2, 2), np.float32), "m", alone=alone)
        await batcher.stop()

    run(scenario())


class TaskRecorder(Recorder):
    """Also records which asyncio task ran each batch (None: the batcher's thread)."""

    def __init__(self):
        super().__init__()
        self.tasks: list = []

    def __call__(self, images, metas):
        try:
            self.tasks.append(asyncio.current_task())
        except RuntimeError:  # no running loop in this thread
            self.tasks.append(None)
        return super().__call__(images, metas)


def test_a_request_alone_in_the_server_runs_in_its_own_task_without_queueing():
    recorder = TaskRecorder()

    async def scenario():
        batcher = await started(recorder, inline_max=1.0)
        await batcher.submit(np.ones((2, 2), np.float32), "m")  # measured: quick enough
        ours = asyncio.current_task()
        alone = await batcher.submit(np.ones((2, 2), np.float32), "a", alone=True)
        queued = await batcher.submit(np.ones((2, 2), np.float32), "q")
        await batcher.stop()
        return ours, alone, queued

    ours, alone, queued = run(scenario())
    assert alone == (4.0, "a") and queued == (4.0, "q")
    assert recorder.tasks[1] is ours  # the caller's own task ran the model
    assert recorder.tasks[2] is not ours  # without `alone`: the batcher's task
    assert recorder.sizes == [1, 1, 1]


def test_alone_still_queues_behind_waiting_images_or_before_the_model_is_measured():
    gate = threading.Event()
    recorder = Recorder(gate)

    async def scenario():
        batcher = await started(recorder, inline_max=1.0, max_batch=8)
        # not measured yet: even alone, the first image goes to the batcher's thread
        first = asyncio.create_task(batcher.submit(np.ones((2, 2), np.float32), 1, alone=True))
        await asyncio.sleep(0.05)
        later = [
            asyncio.create_task(batcher.submit(np.ones((2, 2), np.float32), i, alone=True))
            for i in (2, 3)
        ]
        await asyncio.sleep(0.05)  # a batch is running: the others wait and batch together
        gate.set()
        results = await asyncio.gather(first, *later)
        await batcher.stop()
        return results

    results = run(scenario())
    assert [meta for _, meta in results] == [1, 2, 3]
    assert recorder.sizes == [1, 2]
