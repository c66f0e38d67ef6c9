"""Samples/s of the exporter's Monte-Carlo on each executor against bare onnxruntime.

    python -m exporter.throughput models/cifar10-sigma0.25/base.onnx [--workers N] [--rounds 3]

Bare onnxruntime: one session on every core running one fixed batch again and again (no
noise, no counting), the rate `targets` compares itself with. Then the same targets chunks
(`exporter.chunk_work.label_chunk`: noise, forward pass, counting) on one process (the
exporter before executors), on the local pool and on a local Ray of `--workers` workers.
Each executor is started and warmed (workers started, sessions built) before it is timed;
rounds alternate between them, so a busy spell of a shared machine hits all of them; each
figure is the mean and spread of `--rounds` rounds of the same chunks. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np

from accsmooth.runtime import OnnxPredictor, make_session
from exporter import chunk_work
from exporter.executor import Executor, LocalExecutor, RayExecutor, cores
from exporter.targets import bare_rate

CHUNK_IMAGES, SAMPLES, BATCH = 8, 256, 256  # 2,048 noisy samples per chunk


def bare_onnxruntime(model: Path, seconds: float) -> float:
    """Images/s of one session (every core) on one fixed random batch."""
    predict = OnnxPredictor(make_session(model))
    shape = predict.session.get_inputs()[0].shape[1:]
    return bare_rate(predict, shape, BATCH, seconds)


def chunks(model: Path, count: int) -> list:
    predict = OnnxPredictor(make_session(model))
    shape = predict.session.get_inputs()[0].shape[1:]
    k = predict(np.zeros((1, *shape), dtype=np.float32)).shape[1]
    images = np.random.default_rng(0).integers(0, 256, (CHUNK_IMAGES, *shape), dtype=np.uint8)
    kwargs = dict(seed=0, sigma=0.25, num_classes=k, num_samples=SAMPLES, extra_samples=0)
    kwargs |= dict(confident_fraction=1.0, batch_size=BATCH, images_uint8=images)
    return [(i, kwargs | {"index": i}) for i in range(count)]


def samples_per_s(executor: Executor, model: Path, tasks: list) -> float:
    t0 = time.perf_counter()
    drawn = sum(d for _, (_, d) in executor.map(chunk_work.label_chunk, model, tasks))
    return drawn / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the base model, e.g. models/<bundle>/base.onnx")
    parser.add_argument("--workers", type=int, default=cores(), help="pool and Ray workers")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per executor")
    parser.add_argument("--chunks", type=int, default=8, help="chunks of 2,048 samples a round")
    parser.add_argument("--bare-seconds", type=float, default=3.0, help="bare run per round")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray out")
    args = parser.parse_args(argv)
    tasks = chunks(args.model, args.chunks)
    makers = [lambda: LocalExecutor(1), lambda: LocalExecutor(args.workers)]
    if not args.no_ray:
        makers.append(lambda: RayExecutor(workers=args.workers))
    with contextlib.ExitStack() as stack:
        executors, start = [], {}
        for make in makers:  # start-up: workers started, sessions built, first chunks run
            t0 = time.perf_counter()
            executor = stack.enter_context(make())
            list(executor.map(chunk_work.label_chunk, args.model, tasks[: executor.workers]))
            executors.append(executor)
            start[executor.describe()] = time.perf_counter() - t0
        bare_name = "bare onnxruntime (1 session, every core, no noise)"
        rates: dict[str, list[float]] = {bare_name: []} | {name: [] for name in start}
        for _ in range(args.rounds):  # interleaved, so that a busy spell hits every executor
            rates[bare_name].append(bare_onnxruntime(args.model, args.bare_seconds))
            for executor in executors:
                rates[executor.describe()].append(samples_per_s(executor, args.model, tasks))
    reference = statistics.mean(rates[bare_name])
    print("| executor | samples/s (mean ± sd) | of bare | start-up s |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        up = f"{start[name]:.1f}" if name in start else "-"
        print(f"| {name} | {mean:,.0f} ± {sd:,.0f} | {mean / reference:.0%} | {up} |")


if __name__ == "__main__":
    main()
