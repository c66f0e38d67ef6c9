"""The audit pool: bounded admission (429 with Retry-After from the queued samples), slots freed
when work really ends, jobs cancelled while queued or between batches."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.http.errors import AuditQueueFull, ClientDisconnected, ShuttingDown
from server.sampled.pool import SampledJob, SampledPool


def test_work_runs_off_the_event_loop_and_reports_its_timings():
    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=0)
        loop_thread = threading.get_ident()
        result, queued, compute = await pool.submit(lambda: threading.get_ident())
        pool.shutdown()
        return loop_thread, result, queued, compute

    loop_thread, worker_thread, queued, compute = asyncio.run(scenario())
    assert worker_thread != loop_thread
    assert queued >= 0 and compute >= 0


def test_admission_beyond_workers_plus_queue_raises_audit_queue_full():
    gate = threading.Event()

    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=1)
        running = pool.submit(lambda: gate.wait(5))
        waiting = pool.submit(lambda: "second")
        with pytest.raises(AuditQueueFull) as info:
            pool.submit(lambda: "third")
        gate.set()
        results = [r[0] for r in await asyncio.gather(running, waiting)]
        await asyncio.sleep(0.01)  # let the release callbacks run
        third = (await pool.submit(lambda: "third"))[0]
        pool.shutdown()
        return info.value, results, third

    error, results, third = asyncio.run(scenario())
    assert "2 audits running or queued" in error.detail
    assert int(error.headers["Retry-After"]) >= 1
    assert results == [True, "second"] and third == "third"


def test_a_cancelled_waiter_does_not_free_the_slot_of_running_work():
    gate = threading.Event()

    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=0)
        running = pool.submit(lambda: gate.wait(5))
        running.cancel()  # the client went away; the computation is still going
        await asyncio.sleep(0.01)
        with pytest.raises(AuditQueueFull):
            pool.submit(lambda: None)
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if pool.admitted == 0:
                break
        pool.shutdown()
        return pool.admitted

    assert asyncio.run(scenario()) == 0


def test_cancelling_a_queued_job_answers_its_waiter_at_once_and_frees_its_slot():
    gate = threading.Event()

    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=1)
        running = pool.submit(lambda: gate.wait(5))
        job = SampledJob(100)
        queued = pool.submit(lambda: "never", job)
        job.cancel(ClientDisconnected("gone"))
        with pytest.raises(ClientDisconnected):
            await queued
        await asyncio.sleep(0.01)
        admitted = pool.admitted
        gate.set()
        await running
        pool.shutdown()
        return admitted

    assert asyncio.run(scenario()) == 1  # only the running job holds a slot


def test_a_running_job_stops_at_its_next_batch_once_cancelled():
    started = threading.Event()

    def work(job: SampledJob) -> int:
        batches = 0
        while True:  # an endless audit: only cancelling ends it
            job.advance(64)
            batches += 1
            started.set()
            time.sleep(0.001)

    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=0)
        job = SampledJob(10**12)
        pending = pool.submit(lambda: work(job), job)
        await asyncio.to_thread(started.wait, 10)
        job.cancel(ShuttingDown("bye"))
        with pytest.raises(ShuttingDown):
            await pending
        for _ in range(500):
            if pool.admitted == 0:
                break
            await asyncio.sleep(0.01)
        pool.shutdown()
        return pool.admitted, job.done

    admitted, done = asyncio.run(scenario())
    assert admitted == 0 and done > 0


def test_retry_after_is_the_queued_samples_over_the_measured_rate():
    gate = threading.Event()

    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=3)
        for _ in range(4):  # four audits of 100,000 samples, none started drawing
            pool.submit(lambda: gate.wait(5), SampledJob(100_000))
        with pytest.raises(AuditQueueFull) as info:
            pool.submit(lambda: None, SampledJob(100_000), rate_hint=20_000.0)
        gate.set()
        pool.shutdown()
        return info.value

    error = asyncio.run(scenario())
    assert error.headers["Retry-After"] == "20"  # 400,000 samples at 20,000 per second


def test_cancel_all_cancels_every_job_and_refuses_new_work():
    gate = threading.Event()

    async def scenario():
        pool = SampledPool(concurrency=1, queue_size=2)
        pending = [pool.submit(lambda: gate.wait(5), SampledJob(10)) for _ in range(3)]
        assert pool.cancel_all(ShuttingDown("grace period over")) == 3
        with pytest.raises(ShuttingDown):
            pool.submit(lambda: None)
        queued = await asyncio.gather(*pending[1:], return_exceptions=True)
        gate.set()
        pool.shutdown()
        return queued

    assert all(isinstance(e, ShuttingDown) for e in asyncio.run(scenario()))
