"""Headless locust against a server it starts, with pass/fail thresholds: `make loadtest`, soak.

    python -m loadtests.run_locust --users 20 --run-time 60s --max-p95-ms 60 --max-fail-ratio 0.001
    python -m loadtests.run_locust --name soak --users 16 --user-rate 40 --run-time 10m

Starts `python -m server` on a free port (or uses `--url`), runs locust on
`loadtests/locustfile.py` for the given time, and writes `<out>/<name>_stats.csv`,
`_stats_history.csv`, `_failures.csv`, `<name>.html` and `<name>_summary.json` (thresholds,
the /certify row, server memory every 10 s, start and end). Exits 1 when the failure ratio over
all requests or the p95 of /certify passes its threshold (milliseconds), 2 when locust itself
failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtests.serve import REPO, ServerProcess

RESULTS = REPO / "loadtests" / "results"
BENCH = RESULTS / "bench.json"


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    """locust's _stats.csv as {name: row}."""
    with path.open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


class MemoryWatch(threading.Thread):
    """Server RSS (MiB) every `every` seconds while the load runs."""

    def __init__(self, server: ServerProcess | None, every: float = 10.0):
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        if self.server:
            self.samples.append(
                (round(time.monotonic() - self.t0, 1), round(self.server.rss_mb(), 1))
            )

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.sample()


def run_locust(args, url: str, prefix: Path, env: dict) -> int:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtests" / "locustfile.py"),
        "--headless",
        "--host",
        url,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.run_time,
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        f"{prefix}.html",
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    return subprocess.run(command, cwd=REPO, env=env).returncode


def summarize(args, stats: dict, memory: MemoryWatch, server_rss_start: float | None) -> dict:
    total = stats["Aggregated"]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    certify = stats.get("/certify")
    p95 = float(certify["95%"]) if certify else float("inf")
    ratio = failures / requests if requests else 1.0
    rows = {
        name: {
            "requests": int(r["Request Count"]),
            "failures": int(r["Failure Count"]),
            "rate_per_s": round(float(r["Requests/s"]), 1),
            "p50_ms": float(r["50%"]),
            "p95_ms": float(r["95%"]),
            "p99_ms": float(r["99%"]),
            "max_ms": round(float(r["Max Response Time"]), 1),
        }
        for name, r in stats.items()
        if name != "/models"
    }
    return {
        "name": args.name,
        "users": args.users,
        "user_rate_per_s": args.user_rate,
        "capacity_fraction": args.capacity_fraction,
        "run_time": args.run_time,
        "thresholds": {"max_fail_ratio": args.max_fail_ratio, "max_p95_ms": args.max_p95_ms},
        "failure_ratio": ratio,
        "certify_p95_ms": p95,
        "passed": ratio <= args.max_fail_ratio and p95 <= args.max_p95_ms,
        "endpoints": rows,
        "server_rss_mb": {
            "after_start": server_rss_start,
            "samples": memory.samples,
            "end": memory.samples[-1][1] if memory.samples else None,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="loadtest", help="file prefix in --out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--models-dir", default=os.environ.get("ACCSMOOTH_MODELS_DIR", "models"))
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--run-time", default="60s", help="locust duration, e.g. 60s, 10m")
    parser.add_argument(
        "--user-rate",
        type=float,
        default=0.0,
        help="requests/s per fast-path user (0: back to back)",
    )
    parser.add_argument(
        "--capacity-fraction",
        type=float,
        help="set --user-rate so the users offer this fraction of the /certify capacity"
        " measured by `make bench` (results/bench.json)",
    )
    parser.add_argument("--max-fail-ratio", type=float, default=0.001)
    parser.add_argument("--max-p95-ms", type=float, default=100.0)
    args = parser.parse_args(argv)

    if args.capacity_fraction:
        capacity = max(r["rate_per_s"] for r in json.loads(BENCH.read_text())["http_certify"])
        # every user but the audit user offers user_rate images/s (batch users in batches)
        args.user_rate = round(args.capacity_fraction * capacity / (args.users - 1), 2)
        print(
            f"capacity {capacity:.0f}/s x {args.capacity_fraction}: {args.users - 1} users"
            f" at {args.user_rate}/s each"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / args.name
    env = os.environ | {"ACCSMOOTH_LOAD_USER_RATE": str(args.user_rate), "PYTHONPATH": str(REPO)}
    server = None if args.url else ServerProcess(args.models_dir, log_path=f"{prefix}_server.log")
    try:
        url = args.url or server.start().url
        rss_start = round(server.rss_mb(), 1) if server else None
        memory = MemoryWatch(server)
        memory.start()
        code = run_locust(args, url, prefix, env)
        memory.stop()
    finally:
        if server:
            server.stop()
    stats_path = Path(f"{prefix}_stats.csv")
    if code != 0 or not stats_path.exists():
        print(f"locust failed (exit {code}); see {prefix}_server.log", file=sys.stderr)
        sys.exit(2)
    summary = summarize(args, read_stats(stats_path), memory, rss_start)
    Path(f"{prefix}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("failure_ratio", "certify_p95_ms", "passed")}))
    for name, row in summary["endpoints"].items():
        print(f"  {name:<24} {row}")
    print(f"  server RSS MiB: start {rss_start}, end {summary['server_rss_mb']['end']}")
    if not summary["passed"]:
        print(
            f"FAILED: failure ratio {summary['failure_ratio']:.4%} (max {args.max_fail_ratio:.4%})"
            f", /certify p95 {summary['certify_p95_ms']} ms (max {args.max_p95_ms} ms)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
