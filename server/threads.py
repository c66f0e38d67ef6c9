"""Thread helpers shared by the server's worker pools (image decoding, sampled certification,
shadow audits)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def lower_thread_priority(niceness: int) -> None:
    """Thread initializer: add `niceness` to this thread's nice value (Linux: this thread only)."""
    if niceness <= 0:
        return
    try:
        os.nice(niceness)
    except OSError as exc:  # not permitted here: the work then runs at normal priority
        log.warning("worker threads: cannot lower their priority: %s", exc)
