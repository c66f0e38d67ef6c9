"""Audit workers run niced (ACCSMOOTH_SAMPLED_NICE), the rest of the server does not."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from server.sampled.pool import SampledPool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def audit_thread_nice(niceness: int) -> int:
    async def run() -> int:
        pool = SampledPool(concurrency=1, queue_size=0, niceness=niceness)
        try:
            value, _, _ = await pool.submit(thread_nice)
            return value
        finally:
            pool.shutdown()

    return asyncio.run(run())


def test_audit_threads_are_niced_and_the_caller_is_not():
    before = thread_nice()
    assert audit_thread_nice(7) == min(19, before + 7)
    assert thread_nice() == before


def test_niceness_zero_leaves_audit_threads_at_normal_priority():
    assert audit_thread_nice(0) == thread_nice()
