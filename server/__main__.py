"""`python -m server`: serve the model bundles with uvicorn.

    python -m server --host 0.0.0.0 --port 8000 --workers 2 --models-dir models

`--workers auto` (the default) starts one worker per CPU this process may use: its affinity
mask, capped by a container's CPU quota (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`, rounded
down, at least one). One event loop is the ceiling of a worker's request rate (HTTP parsing,
decoding and JSON run under its GIL), so a second core serves more only through a second worker;
measured in loadtests/README.md.

Every option is also an ACCSMOOTH_* environment variable (see `server.settings`); options given
here win and are passed to the workers through the environment. With more than one
worker, Prometheus metrics live in PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless
you set one; stale files from an earlier run are removed), so /metrics is whole whichever
worker answers the scrape; likewise each worker marks itself ready in a fresh
ACCSMOOTH_READY_DIR, so /readyz is 200 only once every worker is (`server.readiness`). This
module imports nothing that imports prometheus_client before that variable is set.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import shutil
import tempfile
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (a container's --cpus), None without one.
    Reads cgroup v2's `cpu.max` ("max 100000" or "150000 100000"), else v1's cfs quota/period."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may run on (affinity mask), capped by the cgroup's quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.floor(limit))
    return max(1, cpus)


def worker_count(value: str) -> int:
    """`--workers`: a positive integer, or "auto" for one per usable CPU."""
    if value.strip().lower() == "auto":
        return usable_cpus()
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of workers >= 1, or auto")
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("ACCSMOOTH_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ACCSMOOTH_PORT", 8000)))
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=os.environ.get("ACCSMOOTH_WORKERS", "auto"),
        help="uvicorn worker processes, each loading every bundle (auto: one per usable CPU)",
    )
    parser.add_argument("--models-dir", type=Path, help="overrides ACCSMOOTH_MODELS_DIR")
    parser.add_argument("--default-model", help="overrides ACCSMOOTH_DEFAULT_MODEL")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def prepare_multiprocess_dir(workers: int) -> str | None:
    """Set up PROMETHEUS_MULTIPROC_DIR (needed with several workers); returns a folder this
    run created (to delete at exit), None when there is none or it is the caller's."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    if workers <= 1:
        return None
    folder = tempfile.mkdtemp(prefix="accsmooth-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


def prepare_ready_dir(workers: int) -> str | None:
    """With several workers, a fresh ACCSMOOTH_READY_DIR where each marks itself ready, so that
    /readyz, whichever worker answers it, is 200 only once all are (`server.readiness`);
    returns the folder (to delete at exit), None with one worker."""
    os.environ.pop("ACCSMOOTH_READY_DIR", None)  # never another server's
    if workers <= 1:
        return None
    from server import readiness

    folder = tempfile.mkdtemp(prefix="accsmooth-ready-")
    readiness.prepare(Path(folder), workers)
    os.environ["ACCSMOOTH_READY_DIR"] = folder
    return folder


# uvicorn's supervisor pings every worker and replaces one that has not answered within
# `timeout_worker_healthcheck` seconds, 5 by default. A worker that imports onnxruntime and
# loads its bundles on a busy or CPU-throttled host (a container with --cpus=1) can take longer
# than that to answer its first ping, and is then killed and respawned for ever. A minute is
# enough to start and still replaces a hung worker. uvicorn has the option from 0.37 on.
WORKER_HEALTHCHECK_SECONDS = 60


HTTP_PROTOCOL = "server.http.protocol:GuardedHttpToolsProtocol"

# Seconds after the app's own grace period at which uvicorn cancels whatever is still running.
SHUTDOWN_BACKSTOP_SECONDS = 5.0


def supervisor_options(config_parameters=None) -> dict:
    """Options for uvicorn's multi-worker supervisor that this uvicorn version supports."""
    if config_parameters is None:
        import uvicorn

        config_parameters = inspect.signature(uvicorn.Config).parameters
    if "timeout_worker_healthcheck" in config_parameters:
        return {"timeout_worker_healthcheck": WORKER_HEALTHCHECK_SECONDS}
    return {}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.models_dir is not None:
        os.environ["ACCSMOOTH_MODELS_DIR"] = str(args.models_dir)
    if args.default_model:
        os.environ["ACCSMOOTH_DEFAULT_MODEL"] = args.default_model
    if args.log_level:
        os.environ["ACCSMOOTH_LOG_LEVEL"] = args.log_level
    created = {
        "PROMETHEUS_MULTIPROC_DIR": prepare_multiprocess_dir(args.workers),
        "ACCSMOOTH_READY_DIR": prepare_ready_dir(args.workers),
    }
    import uvicorn  # after the environment is final: workers inherit it

    from server.settings import Settings

    settings = Settings()

    try:
        uvicorn.run(
            "server.http.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=os.environ.get("ACCSMOOTH_LOG_LEVEL", "info"),
            access_log=False,  # per-request log lines cost more than a fast request
            http=HTTP_PROTOCOL,  # header deadline and size limit (server.http.protocol)
            # a backstop only: the app itself cancels its audits at ACCSMOOTH_GRACEFUL_TIMEOUT_S
            # (server.lifecycle) and answers them; uvicorn cancels whatever still runs after
            timeout_graceful_shutdown=settings.graceful_timeout_s + SHUTDOWN_BACKSTOP_SECONDS,
            **supervisor_options(),
        )
    finally:  # the folders this run made go, and so do the variables naming them
        for variable, folder in created.items():
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
                os.environ.pop(variable, None)


if __name__ == "__main__":
    main()
