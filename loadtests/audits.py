"""Benchmark helpers for the audit path: one audit, /certify latency on one image, peak server
memory while something runs, and streams of concurrent audits kept running in the background.

Plain `http.client` on one keep-alive connection per caller: a benchmark client that adds as
little as possible to what it measures.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from urllib.parse import urlsplit

import numpy as np

from loadtests.images import LoadImage


def post(url: str, path: str, image: LoadImage, timeout: float = 600.0, conn=None):
    """POST the image as the raw body; (status, parsed JSON, seconds)."""
    parts = urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("POST", path, body=image.data, headers={"content-type": image.content_type})
        response = conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - t0
    finally:
        if own:
            conn.close()
    return response.status, json.loads(body), seconds


def audit(url: str, image: LoadImage, *, n0: int, n: int, seed: int = 7) -> tuple[dict, float]:
    """One /certify/sampled answer and its end-to-end seconds; raises unless 200."""
    status, body, seconds = post(url, f"/certify/sampled?n0={n0}&n={n}&seed={seed}", image)
    if status != 200:
        raise RuntimeError(f"/certify/sampled n={n}: HTTP {status}: {body}")
    return body, seconds


def certify_latency(url: str, image: LoadImage, count: int = 300) -> dict:
    """Client-side /certify latency (ms) of `count` sequential requests for one image."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    times = []
    try:
        for i in range(count + 20):
            status, body, seconds = post(url, "/certify", image, conn=conn)
            if status != 200:
                raise RuntimeError(f"/certify: HTTP {status}: {body}")
            if i >= 20:  # the first ones warm the connection and caches
                times.append(seconds * 1000.0)
    finally:
        conn.close()
    p50, p99 = np.percentile(times, [50, 99])
    return {"count": count, "p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def peak_rss_during(server, fn, every: float = 0.02):
    """(peak server RSS in MiB while fn() ran, fn's result)."""
    peak = [server.rss_mb()]
    done = threading.Event()

    def watch():
        while not done.wait(every):
            peak[0] = max(peak[0], server.rss_mb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], server.rss_mb()), result


def running_audits(url: str) -> float:
    """The server's `accsmooth_sampled_running` gauge."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(r"^accsmooth_sampled_running(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


class AuditStreams:
    """`k` threads, each sending one audit after another until the context exits; the exit
    waits for the audits in progress, so the server is idle again afterwards."""

    def __init__(self, url: str, image: LoadImage, k: int, *, n0: int, n: int):
        self.url, self.image, self.k, self.n0, self.n = url, image, k, n0, n
        self.stop = threading.Event()
        self.finished = 0
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(k)
        ]

    def _loop(self, i: int) -> None:
        seed = 1000 * i
        while not self.stop.is_set():
            seed += 1
            try:
                audit(self.url, self.image, n0=self.n0, n=self.n, seed=seed)
                self.finished += 1
            except (RuntimeError, OSError) as exc:
                self.errors.append(str(exc)[:200])
                time.sleep(0.5)

    def wait_running(self, url: str, k: int, timeout: float = 30.0) -> None:
        """Wait until the server reports `k` audits computing."""
        deadline = time.monotonic() + timeout
        while k and running_audits(url) < k:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{k} audits never ran at once (errors: {self.errors[:3]})")
            time.sleep(0.1)

    def __enter__(self) -> AuditStreams:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
