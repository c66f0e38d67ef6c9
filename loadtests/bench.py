"""`make bench`: one run, one machine, every performance figure and goal.

    python -m loadtests.bench                                   # the default bundle, full run
    python -m loadtests.bench --models-dir /tmp/m --quick       # a functional check, ~1 min

Sections, in order (each a key of the JSON report, `loadtests/results/bench.json`):
1. bare onnxruntime: the surrogate at batch 1 and at its best batch, the base model at the
   audit batch size (server's session options; no server running);
2. /certify over HTTP at 1, 16 and 64 closed-loop clients (`loadtests.loadgen` in its own
   process: rate, p50/p95/p99, client and server CPU), and the ratio to the bare rates; then
   the same with `wrk` (`loadtests.wrk`), for /certify and for the Open Inference Protocol's
   /v2/models/{name}/infer (binary-data extension) on the same image;
3. Monte-Carlo audits over HTTP (/certify/sampled) at n = 10,000 and 100,000: seconds per image,
   samples/s against the bare base-model rate, peak server RSS against an n = 1,000 audit, and
   the speed-up of /certify over the n = 100,000 audit on the same image;
4. the fast path's p99 while 0, 1, 2 and 4 audits compute at once (a second server with
   ACCSMOOTH_SAMPLED_CONCURRENCY=4, so they really run together, not queued), once with the
   audit threads at normal priority (ACCSMOOTH_SAMPLED_NICE=0) and once as configured.
A table of the figures and their goals is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from accsmooth.bundle import read_manifest
from loadtests import bare, wrk
from loadtests.audits import AuditStreams, audit, certify_latency, peak_rss_during
from loadtests.images import load_images
from loadtests.machine import machine_facts
from loadtests.serve import REPO, ServerProcess, server_settings, single_bundle_dir
from loadtests.table import goals_table, print_table

RESULTS = REPO / "loadtests" / "results"


def loadgen(url: str, concurrency: int, seconds: float, warmup: float, path="/certify") -> dict:
    """A closed-loop run of loadtests.loadgen in its own process; its JSON report."""
    command = [
        sys.executable,
        "-m",
        "loadtests.loadgen",
        url,
        "--path",
        path,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(seconds),
        "--warmup",
        str(warmup),
    ]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measured_load(server: ServerProcess, concurrency: int, seconds: float, warmup: float) -> dict:
    """loadgen against `server`, plus the server's CPU use over the same run."""
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    result = loadgen(server.url, concurrency, seconds, warmup)
    cpu = (server.cpu_seconds() - cpu0) * seconds / (time.perf_counter() - t0)
    result["server_cpu_percent_of_one_core"] = round(100.0 * cpu / seconds, 1)
    result.pop("failed_latency_ms", None)
    return {"clients": concurrency, **result}


def http_section(server: ServerProcess, clients, seconds: float, warmup: float) -> list[dict]:
    rows = []
    for c in clients:
        row = measured_load(server, c, seconds, warmup)
        print(
            f"  /certify, {c} clients: {row['rate_per_s']:.0f}/s, {row['latency_ms']}", flush=True
        )
        rows.append(row)
    return rows


def audit_section(server: ServerProcess, image, ns, n0: int, bare_base: dict) -> dict:
    """Audits at n = 1,000 (memory baseline) and each n of `ns`, on one image, one at a time."""
    audit(server.url, image, n0=n0, n=1000)  # warm-up: the base session's first big batch
    out: dict = {"image": image.name, "n0": n0, "runs": []}
    for n in (1000, *ns):
        peak, (result, seconds) = peak_rss_during(
            server, lambda n=n: audit(server.url, image, n0=n0, n=n)
        )
        row = {
            "n": n,
            "seconds_end_to_end": round(seconds, 3),
            "samples_per_s_compute": round(result["samples_per_second"], 1),
            "samples_per_s_end_to_end": round((n0 + n) / seconds, 1),
            "peak_server_rss_mib": round(peak, 1),
            "predicted_class": result["predicted_class"],
            "certified_radius": result["certified_radius"],
            "surrogate_radius": result["surrogate"]["certified_radius"],
        }
        for label, ref in bare_base.items():
            row[f"fraction_of_bare_{label}"] = round(
                row["samples_per_s_compute"] / ref["images_per_s"], 3
            )
        print(f"  audit n={n}: {row}", flush=True)
        out["runs"].append(row)
    base_rss = out["runs"][0]["peak_server_rss_mib"]
    out["rss_growth_mib_vs_n1000"] = {
        str(r["n"]): round(r["peak_server_rss_mib"] - base_rss, 1) for r in out["runs"][1:]
    }
    certify = certify_latency(server.url, image, count=300)
    largest = out["runs"][-1]
    out["certify_same_image_ms"] = certify
    out["speedup_certify_over_sampled"] = {
        "n": largest["n"],
        "sampled_seconds": largest["seconds_end_to_end"],
        "certify_p50_ms": certify["p50"],
        "speedup": round(largest["seconds_end_to_end"] * 1000.0 / certify["p50"]),
    }
    return out


def interference_section(models_dir, audits, clients, seconds, warmup, n_audit, n0, env) -> dict:
    """Fast-path latency while k audits compute at once (k in `audits`), on a server that runs
    up to max(audits) audits in parallel, with `env` on top."""
    env = {"ACCSMOOTH_SAMPLED_CONCURRENCY": str(max(audits))} | env
    image = load_images(limit=1, png_every=1)[0]
    out = {"server_env": env, "n_per_audit": n_audit, "rows": [], "audits_completed": {}}
    with ServerProcess(models_dir, env=env, log_path="/tmp/accsmooth-bench-audits.log") as server:
        audit(server.url, image, n0=n0, n=1000)
        for k in audits:
            with AuditStreams(server.url, image, k, n0=n0, n=n_audit) as streams:
                streams.wait_running(server.url, k)
                for c in clients:
                    row = measured_load(server, c, seconds, warmup)
                    keep = (
                        "rate_per_s",
                        "latency_ms",
                        "statuses",
                        "server_cpu_percent_of_one_core",
                    )
                    row = {"audits": k, "clients": c} | {key: row[key] for key in keep}
                    print(
                        f"  {k} audits, {c} clients: {row['rate_per_s']:.0f}/s,"
                        f" {row['latency_ms']}",
                        flush=True,
                    )
                    out["rows"].append(row)
            out["audits_completed"][str(k)] = streams.finished
    idle = {r["clients"]: r["latency_ms"]["p99"] for r in out["rows"] if r["audits"] == 0}
    for r in out["rows"]:
        r["p99_over_idle"] = round(r["latency_ms"]["p99"] / idle[r["clients"]], 2)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", help="bundle name (default: the server's default bundle)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench.json")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--ns", default="10000,100000", help="audit sizes n")
    parser.add_argument("--quick", action="store_true", help="short functional run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.ns = 2.0, 0.5, "2000,5000"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    folders = sorted(p for p in args.models_dir.iterdir() if (p / "manifest.json").exists())
    bundle = args.models_dir / args.model if args.model else folders[0]
    manifest = read_manifest(bundle)
    configured = server_settings()  # what the server started below runs with
    settings = configured["settings"]
    clients = [int(c) for c in args.clients.split(",")]
    ns = [int(n) for n in args.ns.split(",")]
    report: dict = {
        "command": "python -m loadtests.bench " + " ".join(argv or sys.argv[1:]),
        "machine": machine_facts(REPO),
        "bundle": {
            "name": manifest.name,
            "version": manifest.version,
            "folder": str(bundle),
            "sha256": dict(manifest.sha256),
        },
    }
    keys = (
        "max_batch",
        "max_queue_delay_ms",
        "max_queue",
        "intra_op_threads",
        "sampled_concurrency",
        "sampled_threads",
        "sampled_batch_size",
    )
    report["server_settings"] = {"workers": 1} | {k: settings[k] for k in keys}
    t_start = time.perf_counter()
    print("bare onnxruntime ...", flush=True)
    bare_seconds = 0.5 if args.quick else 2.0
    report["bare_surrogate"] = bare.surrogate_rates(
        bundle,
        bare.runtime_options(configured["fast_runtime"]),
        bare_seconds,
        max_passes_per_call=settings["max_passes_per_call"],
    )
    report["bare_base"] = bare.base_rates(
        bundle,
        bare.runtime_options(configured["sampled_runtime"]),
        settings["sampled_batch_size"],
        bare_seconds,
    )
    image = load_images(limit=1, png_every=1)[0]
    models_dir = single_bundle_dir(bundle)  # the server holds this bundle only
    with ServerProcess(models_dir, log_path="/tmp/accsmooth-bench.log") as server:
        report["server"] = {"rss_mib_after_start": round(server.rss_mb(), 1)}
        print("/certify over HTTP ...", flush=True)
        report["http_certify"] = http_section(server, clients, args.seconds, args.warmup)
        print("wrk: /certify and /v2/models/{name}/infer ...", flush=True)
        report["wrk"] = wrk.wrk_section(
            server,
            manifest.name,
            image.data,
            clients,
            args.seconds,
            args.warmup,
            report["bare_surrogate"]["batch_1"]["images_per_s"],
        )
        print("Monte-Carlo audits ...", flush=True)
        base = {k: v for k, v in report["bare_base"].items()}
        report["monte_carlo"] = audit_section(server, image, ns, manifest.protocol.n0, base)
    single = report["monte_carlo"]["runs"][-1]["samples_per_s_compute"]
    n_audit = max(1000, int(single * 3.0))  # about 3 s per audit when alone
    setup = (
        models_dir,
        (0, 1, 2, 4),
        (1, 16),
        args.seconds,
        args.warmup,
        n_audit,
        manifest.protocol.n0,
    )
    print("fast path under concurrent audits, audit threads not niced ...", flush=True)
    report["audit_interference_without_nice"] = interference_section(
        *setup, {"ACCSMOOTH_SAMPLED_NICE": "0"}
    )
    print("fast path under concurrent audits, default settings ...", flush=True)
    report["audit_interference"] = interference_section(*setup, {})
    shutil.rmtree(models_dir, ignore_errors=True)  # only the symlink: the bundle stays
    report["run_seconds"] = round(time.perf_counter() - t_start, 1)
    report["goals"] = goals_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
