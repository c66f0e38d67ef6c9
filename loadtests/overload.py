"""Overload and recovery: /certify at several times its capacity, then at a normal rate again.

    python -m loadtests.overload --capacity 1500 --factor 4        # writes results/overload.json

Open-loop arrivals (`loadtests.loadgen --phases`) in four phases, at `--base` x capacity for
10 s (reference), `--factor` x capacity for `--seconds` s (overload), `--base` x capacity for
5 s (drain) and 15 s more (recovery). It passes when, during overload, the server refuses what
it cannot serve (503/429) and fast (p99 of those answers within `--max-shed-ms`) instead of
queueing without bound, and when in the recovery phase every request is a 200 again with a
p99 within `--recover-factor` x the reference p99. Capacity defaults to the best /certify rate
in `results/bench.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from loadtests.serve import REPO, ServerProcess

RESULTS = REPO / "loadtests" / "results"


def capacity_from_bench(path: Path) -> float:
    report = json.loads(path.read_text())
    return max(row["rate_per_s"] for row in report["http_certify"])


def run(url: str, phases: list[tuple[float, float]], timeout: float) -> dict:
    spec = ",".join(f"{rate:.0f}:{seconds:g}" for rate, seconds in phases)
    command = [
        sys.executable,
        "-m",
        "loadtests.loadgen",
        url,
        "--phases",
        spec,
        "--timeline",
        "--timeout",
        str(timeout),
    ]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--capacity", type=float, help="/certify requests/s (default: bench.json)")
    parser.add_argument("--factor", type=float, default=4.0, help="overload, x capacity")
    parser.add_argument("--base", type=float, default=0.5, help="normal load, x capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="overload duration")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout (s)")
    parser.add_argument("--max-shed-ms", type=float, default=250.0)
    parser.add_argument("--recover-factor", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "overload.json")
    args = parser.parse_args(argv)
    capacity = args.capacity or capacity_from_bench(RESULTS / "bench.json")
    base, high = capacity * args.base, capacity * args.factor
    names = ("reference", "overload", "drain", "recovery")
    phases = [(base, 10.0), (high, args.seconds), (base, 5.0), (base, 15.0)]
    log = str(args.out.with_suffix(".server.log"))
    with ServerProcess(args.models_dir, log_path=log) as server:
        rss_start = server.rss_mb()
        result = run(server.url, phases, args.timeout)
        rss_end = server.rss_mb()
        alive = server.process.poll() is None
    by_name = dict(zip(names, result.pop("phases"), strict=True))
    for name, (rate, seconds) in zip(names, phases, strict=True):
        by_name[name] = {"rate_per_s": round(rate), "seconds": seconds} | by_name[name]
    over, recovery = by_name["overload"], by_name["recovery"]
    shed_p99 = over["failed_latency_ms"]["p99"]
    ref_p99 = by_name["reference"]["good_latency_ms"]["p99"]
    rec_p99 = recovery["good_latency_ms"]["p99"]
    checks = {
        "sheds_some_load": any(k in over["outcomes"] for k in ("503", "429")),
        "sheds_quickly": shed_p99 is not None and shed_p99 <= args.max_shed_ms,
        "recovers_all_200": set(recovery["outcomes"]) == {"ok"},
        "recovery_p99": rec_p99 is not None and rec_p99 <= args.recover_factor * ref_p99,
        "server_alive": alive,
    }
    report = {
        "command": "python -m loadtests.overload " + " ".join(argv or sys.argv[1:]),
        "capacity_per_s": capacity,
        "phases": by_name,
        "totals": {k: result[k] for k in ("requests", "good", "statuses", "errors")},
        "client_cpu_seconds": result["client_cpu_seconds"],
        "server_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
        "checks": checks,
        "passed": all(checks.values()),
        "timeline": result["timeline"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "timeline"}, indent=1))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
