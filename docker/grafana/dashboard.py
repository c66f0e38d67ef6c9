"""Write the Grafana dashboard of the accsmooth stack, `dashboards/accsmooth.json`, from code.

The JSON is what Grafana loads (compose mounts `dashboards/`); this script is where it is
edited, so that every query sits next to its panel in a readable list. After a change:

    python docker/grafana/dashboard.py          # rewrites docker/grafana/dashboards/accsmooth.json

tests/docker checks that the JSON is up to date with this script and that every metric it
queries is declared in server/metrics.py. `$model` filters by bundle; `$__rate_interval` is
Grafana's rate window (at least four scrape intervals).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "accsmooth.json"
DATASOURCE = {"type": "prometheus", "uid": "accsmooth-prometheus"}  # provisioning/datasources
RATE = "$__rate_interval"
M = 'model=~"$model"'
FAST = 'endpoint=~"/certify|/certify/batch"'


def quantiles(metric: str, selector: str, by: str, qs=(0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    """(expr, legend) for each quantile of a histogram, grouped by `by` ("a, b")."""
    labels = " ".join(f"{{{{{name.strip()}}}}}" for name in by.split(","))
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{labels} p{round(q * 100)}",
        )
        for q in qs
    ]


def ratio(num: str, den: str, selector: str, by: str) -> str:
    return (
        f"sum by ({by}) (rate({num}{{{selector}}}[{RATE}]))"
        f" / sum by ({by}) (rate({den}{{{selector}}}[{RATE}]))"
    )


# (title, unit, [(expr, legend)], width, extra panel fields); rows start with a str title.
LAYOUT: list = [
    "Traffic",
    ("Request rate by endpoint", "reqps",
     [("sum by (endpoint) (rate(accsmooth_http_requests_total[$__rate_interval]))",
       "{{endpoint}}")], 8, {}),
    ("Answers by status", "reqps",
     [("sum by (status) (rate(accsmooth_http_requests_total"
       '{endpoint=~"/certify.*|/models.*"}[$__rate_interval]))', "{{status}}")], 8, {}),
    ("Shed load and in flight", "short",
     [("sum by (endpoint, reason) (rate(accsmooth_rejected_total[$__rate_interval]))",
       "shed {{endpoint}} {{reason}} /s"),
      ("sum by (endpoint) (accsmooth_http_requests_in_flight)", "in flight {{endpoint}}")],
     8, {}),
    "Latency (server side, per certified image)",
    ("Fast path latency p50 / p95 / p99", "s",
     quantiles("accsmooth_request_seconds", f"{FAST}, {M}", "endpoint"), 12, {}),
    ("Audit latency p50 / p95 / p99 (/certify/sampled)", "s",
     quantiles("accsmooth_request_seconds", f'endpoint="/certify/sampled", {M}', "endpoint"),
     12, {}),
    ("Queue vs compute p95", "s",
     [(e, f"queue {lg}") for e, lg in
      quantiles("accsmooth_queue_seconds", M, "endpoint", qs=(0.95,))]
     + [(e, f"compute {lg}") for e, lg in
        quantiles("accsmooth_compute_seconds", M, "endpoint", qs=(0.95,))], 12, {}),
    ("Latency p99 by endpoint (all)", "s",
     quantiles("accsmooth_request_seconds", M, "endpoint", qs=(0.99,)), 12,
     {"scale": "log"}),
    "Micro-batching",
    ("Batch size p50 / p95 and mean", "short",
     [*quantiles("accsmooth_batch_size", M, "model", qs=(0.5, 0.95)),
      (f"sum by (model) (rate(accsmooth_batch_size_sum{{{M}}}[{RATE}]))"
       f" / sum by (model) (rate(accsmooth_batch_size_count{{{M}}}[{RATE}]))", "{{model}} mean")],
     12, {}),
    ("Queues", "short",
     [(f"sum by (model) (accsmooth_fast_queue_depth{{{M}}})", "fast queue {{model}}"),
      ("sum(accsmooth_sampled_queue_depth)", "audits waiting"),
      ("sum(accsmooth_sampled_running)", "audits running")], 12, {}),
    "Certificates",
    ("Abstention rate", "percentunit",
     [(ratio("accsmooth_abstentions_total", "accsmooth_certificates_total", M, "model, method"),
       "{{model}} {{method}}")], 8, {"max": 1}),
    ("Certified radius p10 / p50 / p90", "none",
     quantiles("accsmooth_certified_radius", M, "model, method", qs=(0.1, 0.5, 0.9)), 8, {}),
    ("Certified radius distribution (surrogate, time range)", "short",
     [(f'sum by (le) (increase(accsmooth_certified_radius_bucket{{{M}, method="surrogate"}}'
       "[$__range]))", "{{le}}")], 8,
     {"type": "bargauge", "format": "heatmap", "instant": True}),
    "Audits: surrogate vs Monte-Carlo",
    ("Audit agreement (same class)", "percentunit",
     [(ratio("accsmooth_audit_same_class_total", "accsmooth_audits_total", M, "model, source"),
       "{{model}} {{source}}")], 8, {"max": 1}),
    ("Over-estimation rate (surrogate radius > Monte-Carlo)", "percentunit",
     [(ratio("accsmooth_audit_overestimated_total", "accsmooth_audits_total", M,
             "model, source"), "{{model}} {{source}}")], 8, {"max": 1}),
    ("Audits and noise samples", "short",
     [(f"sum by (model) (rate(accsmooth_audits_total{{{M}}}[{RATE}]))", "audits/s {{model}}"),
      (f"sum by (model) (rate(accsmooth_noise_samples_total{{{M}}}[{RATE}]))",
       "noise samples/s {{model}}")], 8, {}),
    "Models",
    ("Bundles ready", "short",
     [("min by (model) (accsmooth_model_ready)", "{{model}}")], 12, {"max": 1}),
    ("Execution provider in use", "short",
     [("max by (model, version, graph, provider) (accsmooth_model_info)",
       "{{model}} {{version}} {{graph}}: {{provider}}")], 12, {"type": "table", "instant": True}),
]  # fmt: skip


def panel(pid: int, title: str, unit: str, targets, width: int, extra: dict, x: int, y: int):
    kind = extra.get("type", "timeseries")
    instant = extra.get("instant", False)
    defaults: dict = {"unit": unit}
    if "max" in extra:
        defaults |= {"min": 0, "max": extra["max"]}
    custom = {"scaleDistribution": {"type": "log", "log": 10}} if extra.get("scale") else {}
    if kind == "timeseries":
        defaults["custom"] = custom
    out = {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": not instant,
                "instant": instant,
                **({"format": extra["format"]} if "format" in extra else {}),
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "bargauge":
        out["options"] = {"orientation": "vertical", "displayMode": "basic", "showUnfilled": True}
    if kind == "table":
        out["transformations"] = [{"id": "labelsToFields", "options": {"mode": "columns"}}]
    return out


def build() -> dict:
    panels, pid, x, y = [], 1, 0, 0
    for item in LAYOUT:
        if isinstance(item, str):
            y += 8 if x else 0
            x = 0
            panels.append({"id": pid, "type": "row", "title": item, "collapsed": False,
                           "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})  # fmt: skip
            y, pid = y + 1, pid + 1
            continue
        title, unit, targets, width, extra = item
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(pid, title, unit, targets, width, extra, x, y))
        x, pid = x + width, pid + 1
    model_var = {
        "name": "model",
        "label": "bundle",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": "label_values(accsmooth_model_ready, model)", "refId": "model"},
        "definition": "label_values(accsmooth_model_ready, model)",
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }
    return {
        "uid": "accsmooth-overview",
        "title": "accsmooth: certification server",
        "description": "Traffic, latency, batching, certificates and audits of the accsmooth "
        "server. Generated by docker/grafana/dashboard.py.",
        "tags": ["accsmooth"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "templating": {"list": [model_var]},
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
