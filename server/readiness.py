"""Readiness of the whole server, across uvicorn's worker processes.

Every uvicorn worker loads the bundles itself, and a /readyz call reaches whichever worker the
kernel hands its connection to. Asked alone, the first worker to finish loading would say
"ready" while another still answers 503 to every /certify it gets (seen on a busy machine).
So `python -m server` with several workers gives them a shared folder (ACCSMOOTH_READY_DIR)
holding a file `workers` with their number; a worker writes a file named by its pid there once
its bundles are ready and removes it when it stops, and any worker answers /readyz 200 only
when that many live workers have written theirs. The file of a worker that died without
removing it does not count once its pid is gone, and uvicorn's replacement counts when it has
loaded. Without the folder (one worker, or `uvicorn --factory` run by hand) the worker's own
readiness is the server's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EXPECTED = "workers"  # the file holding how many workers the folder's server runs
MARK_SUFFIX = ".ready"


def prepare(folder: Path, workers: int) -> None:
    """Make `folder` the shared readiness folder of a server with `workers` workers."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"*{MARK_SUFFIX}"):
        stale.unlink(missing_ok=True)
    (folder / EXPECTED).write_text(f"{workers}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


class WorkerReadiness:
    """This worker's mark in the shared folder (if any), and the count of ready workers."""

    def __init__(self, folder: Path | None, pid: int | None = None):
        self.folder = folder
        self.pid = os.getpid() if pid is None else pid
        self.expected = 1
        if folder is not None:
            try:
                self.expected = int((folder / EXPECTED).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"ACCSMOOTH_READY_DIR={folder}: no readable `{EXPECTED}` file in it ({exc});"
                    " the folder is set up by `python -m server`"
                ) from None

    @property
    def mark(self) -> Path | None:
        return None if self.folder is None else self.folder / f"{self.pid}{MARK_SUFFIX}"

    def mark_ready(self) -> None:
        """This worker has every bundle ready (atomic: a reader sees the file whole or not)."""
        if self.mark is None:
            return
        tmp = self.mark.with_suffix(".tmp")
        tmp.write_text(f"{self.pid}\n")
        tmp.replace(self.mark)
        log.info("worker %d ready (%d of %d)", self.pid, self.ready_workers(), self.expected)

    def withdraw(self) -> None:
        """This worker stops serving (shutdown)."""
        if self.mark is not None:
            self.mark.unlink(missing_ok=True)

    def ready_workers(self) -> int:
        """Live workers that have marked themselves ready."""
        if self.folder is None:
            return 1
        pids = (int(p.stem) for p in self.folder.glob(f"*{MARK_SUFFIX}") if p.stem.isdigit())
        return sum(1 for pid in pids if _alive(pid))

    def missing(self) -> str:
        """Why the server as a whole is not ready yet ('' once every worker is), for a worker
        that is ready itself."""
        ready = self.ready_workers()
        if ready >= self.expected:
            return ""
        return f"{ready} of {self.expected} worker processes have their bundles ready"
