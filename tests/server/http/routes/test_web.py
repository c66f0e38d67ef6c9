"""GET /: the web page and its static files (the browser test is test_web_browser.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

SAMPLES = json.loads(
    (Path(__file__).resolve().parents[4] / "server/static/samples/samples.json").read_text()
)


def test_the_page_is_served_at_the_root(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for element in ('id="file-input"', 'id="radius-plot"', 'id="audit-button"', "app.js"):
        assert element in response.text


def test_the_script_and_the_style_are_served(client):
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/certify/sampled" in script.text and "/certify" in script.text
    assert client.get("/static/style.css").status_code == 200


def test_the_sample_images_are_32x32_pngs(client):
    assert client.get("/static/samples/samples.json").json() == SAMPLES
    for sample in SAMPLES:
        response = client.get(f"/static/samples/{sample['file']}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_the_samples_show_a_clear_certificate_first_then_a_small_one_and_an_abstention():
    kinds = [sample["kind"] for sample in SAMPLES]
    assert kinds[0] == "clear" and kinds[-2:] == ["small", "abstains"]
    for sample in SAMPLES:  # each caption says what it shows
        assert sample["label"] in sample["caption"]
        assert ("abstains" in sample["caption"]) == (sample["kind"] == "abstains")


def test_an_unknown_static_file_is_404(client):
    assert client.get("/static/nope.js").status_code == 404


def test_the_page_is_not_in_the_openapi_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/audits" in paths
