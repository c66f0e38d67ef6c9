"""`make fuzz`: schemathesis against a live server's OpenAPI schema, in three configurations.

    python -m tests.fuzz                       # what `make fuzz` runs
    python -m tests.fuzz --examples 40 --seed 7 --report-dir /tmp/fuzz

Each pass starts `python -m server` on an untrained placeholder bundle (3x32x32, 10 classes)
on a free port and runs `schemathesis run <url>/openapi.json` with every phase (examples,
coverage, fuzzing, stateful) and two checks: `not_a_server_error` (no 5xx) and
`error_body_is_json` (tests/fuzz/hooks.py: every error is JSON with `error` and `detail`).
The passes:

- default   the settings a deployment starts with (audits capped at n = 2,000 to stay quick);
- tight     small limits, so that 413 (body), 422 (batch and sample caps) and 429 (audit queue
            of 0) answers are reached;
- key       ACCSMOOTH_API_KEY set and /certify protected: the 401 paths.

A pass fails on any schemathesis failure or on a traceback in the server's log. The summary
prints the test cases run and the server's answers by status (from its own /metrics).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.docker.live import REPO, live_server, write_placeholder

PASSES: dict[str, dict[str, str]] = {
    "default": {"ACCSMOOTH_MAX_SAMPLES": "2000"},
    "tight": {
        "ACCSMOOTH_MAX_BODY_BYTES": "1024",
        "ACCSMOOTH_MAX_BATCH": "2",
        "ACCSMOOTH_MAX_SAMPLES": "500",
        "ACCSMOOTH_MAX_SAMPLED_BATCH_SIZE": "64",
        "ACCSMOOTH_SAMPLED_QUEUE": "0",
        "ACCSMOOTH_MAX_IMAGE_PIXELS": "4096",
    },
    "key": {
        "ACCSMOOTH_MAX_SAMPLES": "2000",
        "ACCSMOOTH_API_KEY": "fuzz-secret",
        "ACCSMOOTH_PROTECT_CERTIFY": "true",
    },
}


def answers_by_status(url: str) -> dict[str, int]:
    """Answers by status, from the server's own counter, less the 503s of /readyz (our own
    readiness polls while the bundle was loading)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "accsmooth_http_requests_total":
                continue
            if labels["endpoint"] == "/readyz" and labels["status"] == "503":
                continue
            counts[labels["status"]] += int(sample.value)
    return dict(sorted(counts.items()))


def run_pass(name: str, env: dict, args, models_dir: Path, out: Path) -> dict:
    """One server, one schemathesis run; returns the figures of the pass."""
    report = out / name
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        "",
        "--checks",
        "not_a_server_error,error_body_is_json",
        "--max-examples",
        str(args.examples),
        "--seed",
        str(args.seed),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--report",
        "json",
        "--report-dir",
        str(report),
    ]
    # Run from the report folder, so that schemathesis's cache lands there, not in the repo.
    st_env = dict(os.environ, SCHEMATHESIS_HOOKS="tests.fuzz.hooks", NO_COLOR="1")
    st_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    report.mkdir(parents=True, exist_ok=True)
    with live_server(models_dir, out / f"server-{name}.log", env=env) as server:
        command[2] = server.url + "/openapi.json"
        print(f"\n== pass {name}: {' '.join(f'{k}={v}' for k, v in env.items())}", flush=True)
        done = subprocess.run(command, cwd=report, env=st_env)
        statuses = answers_by_status(server.url)
    log = server.log_text()
    result = json.loads(next(report.glob("*.json")).read_text())
    return {
        "pass": name,
        "exit_code": done.returncode,
        "cases": result["test_cases"]["generated"],
        "failures": result["test_cases"]["unique_failures"],
        "errors": len(result["errors"]),
        "tracebacks": log.count("Traceback"),
        "statuses": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=15, help="max examples per operation")
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    parser.add_argument("--report-dir", type=Path, help="keep reports and logs here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="accsmooth-fuzz-") as tmp:
        out = args.report_dir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        models_dir = Path(tmp) / "models"
        write_placeholder(models_dir)
        results = [run_pass(p, PASSES[p], args, models_dir, out) for p in args.passes]
        if args.report_dir:
            (out / "summary.json").write_text(json.dumps(results, indent=2))
    print("\npass      cases  failures  errors  server tracebacks  answers by status")
    for r in results:
        print(
            f"{r['pass']:<9} {r['cases']:>5}  {r['failures']:>8}  {r['errors']:>6}"
            f"  {r['tracebacks']:>17}  {r['statuses']}"
        )
    total = sum(r["cases"] for r in results)
    bad = [r for r in results if r["exit_code"] or r["failures"] or r["errors"] or r["tracebacks"]]
    verdict = "FAILED " + ", ".join(r["pass"] for r in bad) if bad else "no 5xx, every error JSON"
    print(f"fuzz: {total} test cases in {len(results)} passes, seed {args.seed}: {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
