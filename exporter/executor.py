"""Where the exporter's Monte-Carlo chunks run: on this machine's cores, or on a Ray cluster.

A stage (the driver) hands an executor a chunk function from `exporter.chunk_work`, the ONNX
model it samples and its unfinished chunks as (chunk index, keyword arguments); `map` yields
(chunk index, result) as chunks finish, in any order, and the driver writes each result to
its chunk file (tmp + rename), so a killed run leaves only whole chunks and resumes from them.

- `LocalExecutor(workers=1)`: in the driver, onnxruntime on every core (the exporter before
  executors existed; a stage called outside `using` and `pipeline.run` runs so).
- `LocalExecutor(workers=N)`, the default of `python -m exporter` and `pipeline.run` with N =
  this machine's cores (1 where onnxruntime has a GPU provider): N spawned processes, one
  onnxruntime thread each. Noise generation and counting are single-threaded numpy, so
  processes keep every core busy where threads inside one session leave them idle.
- `RayExecutor(address)`: Ray tasks of one CPU each, or of one GPU each when the cluster has
  GPUs (the session then takes CUDA/TensorRT where the node's onnxruntime has it). `address`
  None starts a local Ray; "auto" or "ray://host:10001" joins a cluster, whose nodes need
  accsmooth importable with numpy, scipy, onnxruntime and ray (the driver's image, say); the
  model travels through Ray's object store, so nodes need no copy of the work folder.

A worker builds one onnxruntime session per model (keyed by its sha256) and keeps it for
every chunk it runs. Counts are bit-identical across executors: a chunk's draws come from its
own seed, and onnxruntime's CPU kernels give the same outputs at any thread count
(tests/exporter/test_executor.py checks both executors against the in-driver run).

    python -m exporter run --config ... --out ... [--workers N] [--ray | --ray-address ADDR]
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from accsmooth.bundle import sha256_of
from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session

log = logging.getLogger(__name__)

Task = tuple[int, dict[str, Any]]  # (chunk index, keyword arguments of the chunk function)
Work = Callable[..., Any]  # work(predict, **kwargs) -> result
IN_FLIGHT_PER_WORKER = 2  # queued chunks per worker: keeps workers busy, bounds driver memory

_predictors: dict[tuple[str, int], OnnxPredictor] = {}  # per process: (sha256, threads)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpu_available() -> bool:
    """Whether this onnxruntime build has a GPU provider (one session then uses the GPU)."""
    import onnxruntime

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    return bool(gpu & set(onnxruntime.get_available_providers()))


def _predictor(sha: str, model: str | bytes, threads: int) -> OnnxPredictor:
    """This process's session of a model given as a path or (on Ray) as the file's bytes."""
    key = (sha, threads)
    if key not in _predictors:
        path = model
        if isinstance(model, bytes):
            path = Path(tempfile.gettempdir()) / "accsmooth-models" / f"{sha}.onnx"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(model)
                tmp.replace(path)
        _predictors[key] = OnnxPredictor(
            make_session(path, RuntimeOptions(intra_op_threads=threads))
        )
    return _predictors[key]


def run_chunk(work: Work, sha: str, model: str | bytes, threads: int, task: Task):
    """One chunk in a worker: (chunk index, work(predict, **kwargs))."""
    index, kwargs = task
    return index, work(_predictor(sha, model, threads), **kwargs)


class Executor:
    """Runs chunk functions; a context manager that releases its workers on exit."""

    name = "executor"
    workers = 1
    sampler = "numpy"  # whose random stream draws the noise (recorded in the chunk files)

    def map(self, work: Work, model: Path, tasks: Iterable[Task]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.name} ({self.workers} worker{'s' if self.workers != 1 else ''})"


def _bounded(submit, wait_any, tasks: Iterable[Task], limit: int):
    """Keep at most `limit` chunks in flight; yield results as they finish."""
    pending: set = set()
    for task in tasks:
        pending.add(submit(task))
        if len(pending) >= limit:
            done, pending = wait_any(pending)
            yield from done
    while pending:
        done, pending = wait_any(pending)
        yield from done


class LocalExecutor(Executor):
    """The driver alone (workers=1) or a pool of spawned processes, one onnxruntime thread each."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers or (1 if gpu_available() else cores())
        self._pool: ProcessPoolExecutor | None = None

    def map(self, work: Work, model: Path, tasks: Iterable[Task]) -> Iterator[tuple[int, Any]]:
        sha = sha256_of(Path(model))
        if self.workers == 1:  # onnxruntime picks one thread per core
            for task in tasks:
                yield run_chunk(work, sha, str(model), 0, task)
            return
        if self._pool is None:  # spawn, not fork: the driver may hold torch/onnxruntime threads
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)

        def submit(task):
            return self._pool.submit(run_chunk, work, sha, str(model), 1, task)

        def wait_any(pending):
            done, rest = wait(pending, return_when=FIRST_COMPLETED)
            try:
                return [f.result() for f in done], rest
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "Monte-Carlo worker processes died or could not start. A script that runs "
                    "exporter stages on a process pool must guard its entry point with "
                    "`if __name__ == '__main__':` (each spawned worker imports it); "
                    "or run them in this process inside "
                    "`exporter.executor.using(LocalExecutor(1))`"
                ) from exc

        yield from _bounded(submit, wait_any, tasks, IN_FLIGHT_PER_WORKER * self.workers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(
            "the Ray executor needs the `cluster` extra: pip install -e '.[cluster]'"
        ) from exc
    return ray


class RayExecutor(Executor):
    """Ray tasks: one CPU each, or one GPU each on a cluster with GPUs."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        ray = _import_ray()
        self._started = not ray.is_initialized()
        if self._started:
            # a local Ray with `workers` CPUs, or the cluster at `address`
            local = {"num_cpus": workers or cores()} if address is None else {}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        slots = self.gpus or int(resources.get("CPU", 1))
        self.workers = min(workers, slots) if workers else slots
        self._ray = ray
        self._remote = ray.remote(num_cpus=1, num_gpus=1 if self.gpus else 0)(run_chunk)
        self._models: dict[str, Any] = {}  # sha256 -> object ref of the file's bytes
        log.info("ray: %s, %d workers, %d GPUs", address or "local", self.workers, self.gpus)

    def map(self, work: Work, model: Path, tasks: Iterable[Task]) -> Iterator[tuple[int, Any]]:
        ray, sha = self._ray, sha256_of(Path(model))
        if sha not in self._models:  # shipped once through the object store: nodes need no copy
            self._models[sha] = ray.put(Path(model).read_bytes())
        ref = self._models[sha]

        def submit(task):
            return self._remote.remote(work, sha, ref, 1, task)

        def wait_any(pending):
            done, rest = ray.wait(list(pending), num_returns=1)
            return ray.get(done), set(rest)

        yield from _bounded(submit, wait_any, tasks, IN_FLIGHT_PER_WORKER * self.workers)

    def close(self) -> None:
        self._models.clear()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


class TorchExecutor(Executor):
    """In this process, on a torch device (a GPU): the chunks of `exporter.torch_work`, which
    draw their noise on the device and count there.

    `map` takes the same ONNX graph as the other executors and runs the checkpoint it was
    converted from (same stem, `.pt`: base.onnx <- base.pt), so the stamp of the chunk folder
    (the graph's sha256) names the model either way. `batch_size` replaces the chunks' own
    (sized for onnxruntime on a CPU): a GPU wants 10^4-10^5 noisy images per call.
    """

    name = "torch"
    sampler = "torch"

    def __init__(self, device: str = "cuda", batch_size: int = 32_768):
        import torch

        from exporter import torch_work

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.workers = 1
        self._nets: dict[str, Any] = {}
        torch_work.exact_float32()

    def describe(self) -> str:
        return f"torch ({self.device}, batches of {self.batch_size})"

    def _net(self, model: Path):
        from exporter import models

        sha = sha256_of(model)
        if sha not in self._nets:
            checkpoint = model.with_suffix(".pt")
            if not checkpoint.exists():
                raise FileNotFoundError(
                    f"{checkpoint}: the torch executor runs the checkpoint {model.name} was "
                    "converted from, and it is missing"
                )
            net = models.from_checkpoint(checkpoint).to(self.device)
            self._nets[sha] = net
        return self._nets[sha]

    def map(self, work: Work, model: Path, tasks: Iterable[Task]) -> Iterator[tuple[int, Any]]:
        from exporter import torch_work

        net, on_device = self._net(Path(model)), getattr(torch_work, work.__name__)
        for index, kwargs in tasks:
            yield index, on_device(net, **(kwargs | {"batch_size": self.batch_size}))


_active: ContextVar[Executor | None] = ContextVar("exporter_executor", default=None)


@contextlib.contextmanager
def using(executor: Executor) -> Iterator[Executor]:
    """Run the Monte-Carlo stages inside this block on `executor`."""
    token = _active.set(executor)
    try:
        yield executor
    finally:
        _active.reset(token)


@contextlib.contextmanager
def active(workers: int | None = 1) -> Iterator[Executor]:
    """The executor set by `using`, else a local one of `workers` (None: every core), closed
    on exit.

    A stage called outside `using` runs in this process (workers=1), as before executors
    existed: a process pool spawns workers that import the caller's main script, which only
    works behind `if __name__ == "__main__":`. `python -m exporter` and `pipeline.run` set
    every core.
    """
    executor = _active.get()
    if executor is not None:
        yield executor
        return
    with LocalExecutor(workers) as local:
        yield local


def claim_folder(out_dir: Path, stamp: dict) -> None:
    """Make `out_dir` the chunk folder of `stamp` (protocol, seeds, base model hash): a folder
    holding chunks of another stamp is refused, so a resumed run never mixes them in."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "protocol.json"
    if path.exists() and json.loads(path.read_text()) != stamp:
        raise ValueError(
            f"{out_dir}: holds results of another protocol or base model {path.read_text()}; "
            "delete the folder to recompute"
        )
    path.write_text(json.dumps(stamp))
