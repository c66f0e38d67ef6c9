"""Graceful shutdown with a bound: what the server does between SIGTERM and its exit.

At SIGTERM uvicorn stops accepting connections, closes idle keep-alive ones and waits for the
requests in progress. Fast-path requests take milliseconds; Monte-Carlo audits can take minutes,
longer than any container's grace period. `Drain` bounds that wait:

  - at the signal, `/readyz` turns 503 and the slow pools (audits, hybrid fallbacks) refuse new
    work with 503 `shutting_down`; admitted work goes on;
  - `ACCSMOOTH_GRACEFUL_TIMEOUT_S` seconds later every audit still queued or running is
    cancelled (before its next batch of samples) and answered with a JSON 503 `shutting_down`,
    and request bodies still being read are cut off the same way; then the last connections
    close and uvicorn runs the lifespan shutdown.

The app learns of the signal by chaining its handler in front of uvicorn's (main thread only;
under a test client `Drain.begin()` is called directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from server.http.errors import ShuttingDown

log = logging.getLogger(__name__)


class Drain:
    """The drain after SIGTERM: a flag, a deadline, and the pools to cancel at the deadline."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.draining = False
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: list = []
        self._expired_event: asyncio.Event | None = None
        self._previous: dict[int, Callable | int | None] = {}

    def start(self, *pools) -> None:
        """On the event loop, at app startup: the pools to close and cancel when draining."""
        self._loop = asyncio.get_running_loop()
        self._pools = list(pools)
        self._expired_event = asyncio.Event()

    def begin(self) -> None:
        """Start draining (idempotent; on the event loop)."""
        if self.draining:
            return
        self.draining = True
        log.info("SIGTERM: draining; audits still running in %.3g s are cancelled", self.grace_s)
        error = ShuttingDown("the server is shutting down: no new audits are taken")
        for pool in self._pools:
            pool.close(error)
        self._loop.call_later(self.grace_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._expired_event.set()
        error = ShuttingDown(
            f"the server is shutting down: the audit was cancelled after the grace period of"
            f" {self.grace_s:.3g} s (ACCSMOOTH_GRACEFUL_TIMEOUT_S)"
        )
        cancelled = sum(pool.cancel_all(error) for pool in self._pools)
        log.warning("grace period over: %d slow computations cancelled", cancelled)

    async def expired_wait(self) -> None:
        """Returns once the grace period is over (never, while not draining)."""
        await self._expired_event.wait()

    # --- the signal ----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Chain `begin` in front of the current SIGTERM/SIGINT handlers (uvicorn's)."""
        if threading.current_thread() is not threading.main_thread():
            return  # a test client runs the app off the main thread: no signals there
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            self._previous[signum] = previous

            def handler(sig, frame, previous=previous):
                self._loop.call_soon_threadsafe(self.begin)
                if callable(previous):
                    previous(sig, frame)
                else:  # SIG_DFL: the default action, as if we had not been there
                    signal.signal(sig, previous or signal.SIG_DFL)
                    signal.raise_signal(sig)

            signal.signal(signum, handler)

    def remove_signal_handlers(self) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        self._previous.clear()
