"""The audit pool: bounded admission (429 with Retry-After), slots freed when work really ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.audit import AuditPool
from server.errors import AuditQueueFull


def test_work_runs_off_the_event_loop_and_reports_its_timings():
    async def scenario():
        pool = AuditPool(concurrency=1, queue_size=0)
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
        pool = AuditPool(concurrency=1, queue_size=1)
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
        pool = AuditPool(concurrency=1, queue_size=0)
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
