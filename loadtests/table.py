"""The benchmark's goals, checked against a report, and the table printed at the end of a run.

python -m loadtests.table loadtests/results/bench.json     # reprint a saved report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _goal(figure: str, value, goal: str, met: bool | None) -> dict:
    return {"figure": figure, "value": value, "goal": goal, "met": met}


def goals_table(r: dict) -> list[dict]:
    """Every performance goal with the figure that decides it."""
    bare1 = r["bare_surrogate"]["batch_1"]["images_per_s"]
    http = {row["clients"]: row for row in r["http_certify"]}
    goals = []
    if 1 in http:
        p50 = http[1]["latency_ms"]["p50"]
        goals.append(_goal("/certify p50 at 1 client, 32x32 PNG (ms)", p50, "<= 3", p50 <= 3.0))
    for c in sorted(k for k in http if k > 1):
        ratio = http[c]["rate_per_s"] / bare1
        goals.append(
            _goal(
                f"/certify rate at {c} clients / bare ORT batch 1",
                round(ratio, 3),
                ">= 0.5",
                ratio >= 0.5,
            )
        )
    mc = r["monte_carlo"]
    for run in mc["runs"][1:]:
        frac = run["fraction_of_bare_audit_threads"]
        goals.append(
            _goal(
                f"audit n={run['n']} samples/s / bare base (same threads)",
                frac,
                ">= 0.9",
                frac >= 0.9,
            )
        )
    growth = max(mc["rss_growth_mib_vs_n1000"].values())
    goals.append(
        _goal("peak RSS growth, largest n vs n=1,000 (MiB)", growth, "flat (< 16)", growth < 16)
    )
    speedup = mc["speedup_certify_over_sampled"]
    goals.append(
        _goal(
            f"speed-up /certify vs /certify/sampled n={speedup['n']}",
            speedup["speedup"],
            ">= 10,000",
            speedup["speedup"] >= 10_000,
        )
    )
    for row in r["audit_interference"]["rows"]:
        if row["audits"]:
            goals.append(
                _goal(
                    f"/certify p99 at {row['clients']} clients with {row['audits']} audits / idle",
                    row["p99_over_idle"],
                    "<= 2",
                    row["p99_over_idle"] <= 2.0,
                )
            )
    return goals


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(r: dict) -> None:
    m = r["machine"]
    print(
        f"\nmachine: {m['cpu_model']}, {m['logical_cores']} cores, {m['memory_gib']} GiB;"
        f" onnxruntime {m['versions']['onnxruntime']}; bundle {r['bundle']['name']}"
    )
    s = r["bare_surrogate"]
    print(
        f"bare ORT surrogate: batch 1 {s['batch_1']['images_per_s']:,.0f} img/s"
        f" ({s['batch_1']['call_ms_p50']:.3f} ms/call); best batch {s['best']['batch']}:"
        f" {s['best']['images_per_s']:,.0f} img/s"
    )
    for label, b in r["bare_base"].items():
        print(f"bare ORT base, batch {b['batch']}, {label}: {b['images_per_s']:,.0f} img/s")
    print(
        f"\n{'clients':>7} {'rate/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'server CPU%':>11} {'client CPU%':>11}"
    )
    for row in r["http_certify"]:
        lat = row["latency_ms"]
        print(
            f"{row['clients']:>7} {row['rate_per_s']:>8,.0f} {lat['p50']:>8.2f} {lat['p95']:>8.2f}"
            f" {lat['p99']:>8.2f} {row['server_cpu_percent_of_one_core']:>11}"
            f" {row['client_cpu_percent_of_one_core']:>11}"
        )
    print(f"\n{'audit n':>9} {'s/image':>8} {'samples/s':>10} {'of bare':>8} {'peak RSS MiB':>13}")
    for run in r["monte_carlo"]["runs"]:
        print(
            f"{run['n']:>9,} {run['seconds_end_to_end']:>8.2f}"
            f" {run['samples_per_s_compute']:>10,.0f}"
            f" {run['fraction_of_bare_audit_threads']:>8.1%} {run['peak_server_rss_mib']:>13.1f}"
        )
    for key in ("audit_interference_without_nice", "audit_interference"):
        if key not in r:
            continue
        print(f"\n{key}: {r[key]['server_env']}")
        print(
            f"{'audits':>6} {'clients':>7} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'p99/idle':>8}"
        )
        for row in r[key]["rows"]:
            lat = row["latency_ms"]
            print(
                f"{row['audits']:>6} {row['clients']:>7} {row['rate_per_s']:>8,.0f}"
                f" {lat['p50']:>8.2f} {lat['p99']:>8.2f} {row['p99_over_idle']:>8.2f}"
            )
    print(f"\n{'goal':<58} {'value':>10} {'target':>12}  met")
    for g in r["goals"]:
        print(
            f"{g['figure']:<58} {_fmt(g['value']):>10} {g['goal']:>12}"
            f"  {'yes' if g['met'] else 'NO'}"
        )


if __name__ == "__main__":
    print_table(json.loads(Path(sys.argv[1]).read_text()))
