"""A lean HTTP/1.1 load generator for /certify: raw asyncio protocols on uvloop, keep-alive.

Run it in its own process (the benchmark does), so its CPU is not the server's; it reports the
CPU it used itself. Two modes:

- closed loop: `--concurrency C` clients, each sends its next request when the last answer
  arrived (the usual "C concurrent users");
- open loop: `--phases RATE:SECONDS,...` arrivals at a fixed rate whatever the server does, on
  as many connections as needed (up to `--max-connections`); latency counts from the planned
  arrival, so a slow server cannot hide its queue (no coordinated omission). For overload.

    python -m loadtests.loadgen http://127.0.0.1:8123 --concurrency 16 --duration 10
    python -m loadtests.loadgen http://127.0.0.1:8123 --phases 6000:20,500:15 --timeline

An answer counts as good when its status is 200 and its body is a certificate (it holds
`"certified_radius"`); the JSON report has the rate of good answers, latency percentiles (ms),
statuses, error kinds and, with `--timeline`, per-second counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from loadtests.images import load_images

GOOD_MARK = b'"certified_radius"'


def build_requests(host: str, path: str, images) -> list[bytes]:
    """One raw POST per image, body = the image bytes with its image/* content type."""
    out = []
    for image in images:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {image.content_type}\r\n"
            f"Content-Length: {len(image.data)}\r\n\r\n"
        )
        out.append(head.encode() + image.data)
    return out


class Connection(asyncio.Protocol):
    """One keep-alive connection; `request(raw)` resolves to (status, body)."""

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection closed before the answer"))

    def data_received(self, data):
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:")
        if start < 0:
            self.waiter.set_exception(ValueError("answer without content-length"))
            return
        stop = head.find(b"\r\n", start)
        length = int(head[start + 15 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : total])
        keep = b"connection: close" not in head
        del self.buffer[:total]
        self.waiter.set_result((status, body, keep))

    async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


@dataclass
class Results:
    """Everything measured; latencies in seconds."""

    started: float
    latencies: list[float] = field(default_factory=list)  # good answers only
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    fail_latencies: list[float] = field(default_factory=list)  # non-200 answers
    timeline: dict[int, Counter] = field(default_factory=dict)
    phases: dict[int, dict] = field(default_factory=dict)  # open loop: per arrival phase

    def record(self, t_start, t_end, outcome: str, latency_kind: str | None, phase=None):
        second = int(t_end - self.started)
        self.timeline.setdefault(second, Counter())[outcome] += 1
        if latency_kind == "good":
            self.latencies.append(t_end - t_start)
        elif latency_kind == "fail":
            self.fail_latencies.append(t_end - t_start)
        if phase is not None:
            p = self.phases.setdefault(phase, {"outcomes": Counter(), "good": [], "fail": []})
            p["outcomes"][outcome] += 1
            if latency_kind:
                p[latency_kind].append(t_end - t_start)


async def _open(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Connection, host, port)
    return protocol


async def _one(
    conn: Connection,
    raw: bytes,
    t_start: float,
    res: Results,
    measure: bool,
    phase: int | None = None,
) -> bool:
    """Send one request; record it; False when the connection must not be reused."""
    try:
        status, body, keep = await conn.request(raw)
    except (OSError, ValueError) as exc:
        if measure:
            res.errors[type(exc).__name__] += 1
            res.record(t_start, time.perf_counter(), "error", None, phase)
        return False
    if measure:
        t_end = time.perf_counter()
        res.statuses[status] += 1
        good = status == 200 and GOOD_MARK in body
        if status == 200 and not good:
            res.errors["bad_body"] += 1
        outcome = "ok" if good else str(status)
        res.record(t_start, t_end, outcome, "good" if good else "fail", phase)
    return keep and not conn.closed


async def closed_loop(host, port, requests, concurrency, duration, warmup) -> Results:
    """`concurrency` clients back to back for warmup + duration seconds; warm-up not recorded."""
    res = Results(started=time.perf_counter() + warmup)
    stop = res.started + duration

    async def client(k: int):
        conn = None
        i = k
        while (now := time.perf_counter()) < stop:
            if conn is None:
                try:
                    conn = await _open(host, port)
                except OSError as exc:
                    if now >= res.started:
                        res.errors[f"connect:{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.01)
                    continue
            raw = requests[i % len(requests)]
            i += concurrency
            if not await _one(conn, raw, now, res, measure=now >= res.started):
                conn.transport.close()
                conn = None
        if conn:
            conn.transport.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return res


async def open_loop(host, port, requests, phases, max_connections, timeout) -> Results:
    """Arrivals at each phase's rate (per second) for its duration, whatever the answers."""
    res = Results(started=time.perf_counter())
    idle: list[Connection] = []
    opened = 0
    tasks = set()

    async def arrival(raw: bytes, planned: float, phase: int):
        nonlocal opened
        conn = None
        while idle and conn is None:
            c = idle.pop()
            conn = None if c.closed else c
        if conn is None:
            if opened >= max_connections:
                res.errors["client_max_connections"] += 1
                res.record(planned, time.perf_counter(), "client_dropped", None, phase)
                return
            opened += 1
            try:
                conn = await asyncio.wait_for(_open(host, port), timeout)
            except (OSError, TimeoutError) as exc:
                opened -= 1
                res.errors[f"connect:{type(exc).__name__}"] += 1
                res.record(planned, time.perf_counter(), "refused", None, phase)
                return
        try:
            reuse = await asyncio.wait_for(_one(conn, raw, planned, res, True, phase), timeout)
        except TimeoutError:
            res.errors["timeout"] += 1
            res.record(planned, time.perf_counter(), "timeout", None, phase)
            reuse = False
        if reuse:
            idle.append(conn)
        else:
            conn.transport.close()
            opened -= 1

    t = res.started
    i = 0
    for phase, (rate, seconds) in enumerate(phases):
        end = t + seconds
        step = 1.0 / rate
        while t < end:
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(arrival(requests[i % len(requests)], t, phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            t += step
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.transport.close()
    return res


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {k: None for k in ("p50", "p90", "p95", "p99", "max", "mean")}
    a = np.asarray(values) * 1000.0
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "max": a.max(), "mean": a.mean()}


def report(res: Results, measured_seconds: float, cpu_seconds: float) -> dict:
    total = sum(res.statuses.values()) + sum(v for k, v in res.errors.items() if k != "bad_body")
    good = len(res.latencies)
    out = {
        "requests": total,
        "good": good,
        "seconds": measured_seconds,
        "rate_per_s": good / measured_seconds if measured_seconds else 0.0,
        "latency_ms": {k: _round(v) for k, v in percentiles_ms(res.latencies).items()},
        "failed_latency_ms": {k: _round(v) for k, v in percentiles_ms(res.fail_latencies).items()},
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "errors": dict(res.errors),
        "client_cpu_seconds": round(cpu_seconds, 2),
        "client_cpu_percent_of_one_core": round(100.0 * cpu_seconds / measured_seconds, 1),
    }
    if res.timeline:
        out["timeline"] = [{"second": s, **c} for s, c in sorted(res.timeline.items())]
    if res.phases:
        out["phases"] = [
            {
                "outcomes": dict(p["outcomes"]),
                "good_latency_ms": {k: _round(v) for k, v in percentiles_ms(p["good"]).items()},
                "failed_latency_ms": {k: _round(v) for k, v in percentiles_ms(p["fail"]).items()},
            }
            for _, p in sorted(res.phases.items())
        ]
    return out


def _round(v):
    return None if v is None else round(float(v), 3)


def parse_phases(text: str) -> list[tuple[float, float]]:
    return [tuple(float(x) for x in part.split(":")) for part in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8123")
    parser.add_argument("--path", default="/certify", help="path and query to POST to")
    parser.add_argument("--concurrency", type=int, default=1, help="closed-loop clients")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--phases", help="open loop: RATE:SECONDS,... (requests per second)")
    parser.add_argument("--max-connections", type=int, default=4000)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--images", help="ImageFolder root (default: $ACCSMOOTH_LOAD_IMAGES)")
    parser.add_argument("--limit", type=int, default=200, help="distinct images")
    parser.add_argument("--png-every", type=int, default=1, help="1: all PNG, 2: half, 0: JPEG")
    parser.add_argument("--timeline", action="store_true", help="per-second counts")
    args = parser.parse_args(argv)

    url = urlsplit(args.url)
    images = load_images(args.images, limit=args.limit, png_every=args.png_every)
    requests = build_requests(url.netloc, args.path, images)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio works, only slower
        pass
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.phases:
        phases = parse_phases(args.phases)
        res = asyncio.run(
            open_loop(url.hostname, url.port, requests, phases, args.max_connections, args.timeout)
        )
        measured = time.perf_counter() - t0
    else:
        res = asyncio.run(
            closed_loop(
                url.hostname, url.port, requests, args.concurrency, args.duration, args.warmup
            )
        )
        measured = args.duration
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if not args.phases:  # the warm-up's share of the CPU is not the measured window's
        cpu *= args.duration / (args.duration + args.warmup)
    out = report(res, measured, cpu)
    if not args.timeline:
        out.pop("timeline", None)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
