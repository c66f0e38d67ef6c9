"""The Grafana dashboard: valid JSON, up to date with its generator, on the provisioned
datasource, showing the panels operations asks for, and querying only metrics (and labels) that
server/metrics.py declares. The integration test runs every query on a real Prometheus."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from server import metrics
from tests.docker.dockerfiles import DOCKER

GRAFANA = DOCKER / "grafana"
JSON_PATH = GRAFANA / "dashboards" / "accsmooth.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def load_generator():
    spec = importlib.util.spec_from_file_location("dashboard", GRAFANA / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared_series() -> dict[str, set[str]]:
    """{exposed series name: its label names} for every metric of server/metrics.py."""
    series = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels = set(value._labelnames)
            for suffix in SUFFIXES[value._type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[value._name + suffix] = labels | extra
    return series


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(JSON_PATH.read_text())


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_json_is_what_the_generator_writes(dashboard):
    assert dashboard == load_generator().build(), "run: python docker/grafana/dashboard.py"


def test_declared_series_are_read_from_server_metrics():
    series = declared_series()
    assert "accsmooth_request_seconds_bucket" in series
    assert "accsmooth_http_requests_total" in series
    assert series["accsmooth_request_seconds_bucket"] == {"endpoint", "model", "le"}


def test_every_queried_metric_and_label_is_declared(dashboard):
    series = declared_series()
    queries = [t["expr"] for _, t in targets(dashboard)]
    queries.append(dashboard["templating"]["list"][0]["definition"])
    for expr in queries:
        names = set(re.findall(r"\baccsmooth_\w+", expr))
        assert names, expr
        unknown = names - set(series)
        assert not unknown, f"not in server/metrics.py: {unknown} in {expr}"
        labels = set().union(*(series[n] for n in names))
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            used |= {g.strip() for g in group.split(",")}
        assert used <= labels, f"labels {used - labels} not on {names}: {expr}"


def test_panels_use_the_provisioned_datasource(dashboard):
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == provisioned["uid"]
            assert all(t["datasource"]["uid"] == provisioned["uid"] for t in panel["targets"])


def test_panels_fit_the_grid_and_have_unique_ids(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def panel_exprs(dashboard, title_part: str) -> str:
    found = [p for p in dashboard["panels"] if title_part.lower() in p["title"].lower()]
    assert found, f"no panel titled like {title_part!r}"
    return " ".join(t["expr"] for p in found for t in p["targets"])


@pytest.mark.parametrize(
    "title, must_contain",
    [
        ("request rate", ["rate(accsmooth_http_requests_total", "by (endpoint)"]),
        (
            "fast path latency",
            [
                "histogram_quantile(0.5,",
                "histogram_quantile(0.95,",
                "histogram_quantile(0.99,",
                "accsmooth_request_seconds_bucket",
                "by (endpoint, le)",
            ],
        ),
        ("audit latency", ["histogram_quantile(0.99,", '"/certify/sampled"']),
        ("batch size", ["accsmooth_batch_size_bucket", "accsmooth_batch_size_sum"]),
        ("abstention", ["accsmooth_abstentions_total", "accsmooth_certificates_total"]),
        ("radius distribution", ["accsmooth_certified_radius_bucket", "by (le)"]),
        ("agreement", ["accsmooth_audit_same_class_total", "accsmooth_audits_total"]),
        ("over-estimation", ["accsmooth_audit_overestimated_total"]),
    ],
)
def test_dashboard_shows_the_panels_operations_needs(dashboard, title, must_contain):
    exprs = panel_exprs(dashboard, title)
    for part in must_contain:
        assert part in exprs, f"{title}: {part!r} missing"
