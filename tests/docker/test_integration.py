"""Integration: a real `python -m server` (two workers, multiprocess metrics, as the image
runs it) and a real Prometheus scraping it every second with the repository's alerting rules.
Prometheus's HTTP query API must find the certify histograms, run every dashboard query
without error, and evaluate every rule without error.

    make test-integration        # needs the `prometheus` binary (Debian package `prometheus`)
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.docker.dockerfiles import DOCKER, REPO
from tests.docker.live import live_prometheus, live_server, prometheus_binary, write_placeholder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="prometheus not installed (Debian: apt-get install -y prometheus)",
    ),
]


def png(rgb: tuple[int, int, int], size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, "PNG")
    return buffer.getvalue()


def post(url: str, body: bytes, content_type: str, wait: float = 60.0) -> dict | list:
    """POST and parse the JSON answer. A 503 is retried for up to `wait` s: with two workers,
    /readyz may be answered by the one that has warmed up while the other still loads, and a
    request it then accepts answers 503 model_not_ready (more likely on a busy machine)."""
    deadline = time.monotonic() + wait
    while True:
        request = urllib.request.Request(url, body, {"content-type": content_type}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "accsmoothboundary"
    head = 'Content-Disposition: form-data; name="image"; filename="{}.png"\r\n'
    parts = [
        f"--{boundary}\r\n{head.format(i)}Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        for i, data in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def query(prometheus: str, expr: str) -> dict:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # 400 with a JSON body for a bad expression
        return json.loads(error.read())


def wait_for(prometheus: str, expr: str, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = query(prometheus, expr)
        assert answer["status"] == "success", answer
        if answer["data"]["result"]:
            return answer["data"]["result"]
        time.sleep(0.5)
    raise AssertionError(f"Prometheus found nothing for {expr} in {timeout:.0f} s")


_START_ERRORS: list[str] = []  # a failed start fails the other tests at once, not in 60 s each


def scrape_config(tmp: Path, target: str) -> Path:
    """The repository's prometheus.yml, scraping `target` every second with the real rules."""
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DOCKER / "prometheus" / "rules" / "*.yml")]
    job = config["scrape_configs"][0]
    job |= {
        "scrape_timeout": "1s",
        "static_configs": [{"targets": [target]} | {"labels": job["static_configs"][0]["labels"]}],
    }
    config["scrape_configs"] = [job]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    return tmp / "prometheus.yml"


def serve_some_traffic(url: str) -> None:
    """4 /certify, one batch of 5, one small audit."""
    for rgb in ((250, 250, 250), (10, 10, 10), (128, 128, 128), (200, 30, 30)):
        post(url + "/certify", png(rgb), "image/png")
    body, content_type = multipart([png((i * 40, 90, 200 - i * 40)) for i in range(5)])
    post(url + "/certify/batch", body, content_type)
    post(url + "/certify/sampled?n=500&n0=50&seed=1", png((250, 250, 250)), "image/png")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server, prometheus) with some traffic already served."""
    if _START_ERRORS:
        pytest.fail(f"the stack did not start: {_START_ERRORS[0]}", pytrace=False)
    tmp = tmp_path_factory.mktemp("stack")
    with contextlib.ExitStack() as started:
        try:
            write_placeholder(tmp / "models")
            server = started.enter_context(
                live_server(tmp / "models", tmp / "server.log", workers=2)
            )
            serve_some_traffic(server.url)
            config = scrape_config(tmp, server.url.removeprefix("http://"))
            prom = started.enter_context(live_prometheus(config, tmp / "tsdb", tmp / "prom.log"))
        except Exception as error:
            _START_ERRORS.append(f"{type(error).__name__}: {str(error)[:2000]}")
            raise
        yield server, prom


def test_prometheus_scrapes_the_server(stack):
    _, prom = stack
    (up,) = wait_for(prom.url, 'up{job="accsmooth"} == 1')
    assert up["metric"]["service"] == "accsmooth"


def test_prometheus_finds_the_certify_histograms(stack):
    _, prom = stack
    buckets = wait_for(prom.url, 'accsmooth_request_seconds_bucket{endpoint="/certify", le="+Inf"}')
    assert sum(float(b["value"][1]) for b in buckets) == 4  # both workers' counts, merged
    for expr in (
        'accsmooth_request_seconds_count{endpoint="/certify/batch"}',
        'accsmooth_request_seconds_count{endpoint="/certify/sampled"}',
        "accsmooth_compute_seconds_bucket",
        "accsmooth_batch_size_count",
        "accsmooth_certified_radius_bucket",
        "accsmooth_audits_total",
    ):
        assert wait_for(prom.url, expr), expr
    p99 = wait_for(
        prom.url,
        "histogram_quantile(0.99, sum by (le) "
        '(accsmooth_request_seconds_bucket{endpoint="/certify"}))',
    )
    assert 0 < float(p99[0]["value"][1]) < 30


def test_every_dashboard_query_runs(stack):
    _, prom = stack
    wait_for(prom.url, "accsmooth_model_ready")
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "accsmooth.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$model", ".*")
            )
            answer = query(prom.url, expr)
            assert answer["status"] == "success", f"{panel['title']}: {answer}"


def test_alerting_rules_load_and_evaluate_without_error(stack):
    _, prom = stack
    wait_for(prom.url, 'up{job="accsmooth"} == 1')
    time.sleep(2)  # a couple of rule evaluations
    with urllib.request.urlopen(prom.url + "/api/v1/rules", timeout=10) as response:
        groups = json.loads(response.read())["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} >= {"AccsmoothDown", "AccsmoothHigh5xxRate"}
    for rule in rules:
        assert rule["health"] in ("ok", "unknown"), rule
        assert rule["state"] == "inactive", f"{rule['name']} fires on a healthy server"


def test_container_healthcheck_passes_against_the_live_server(stack):
    server, _ = stack
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "docker/healthcheck.py"],
        cwd=REPO,
        env={"ACCSMOOTH_PORT": port},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout
