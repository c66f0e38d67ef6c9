"""GET /: the web page and its static files (the browser test is test_web_browser.py)."""

from __future__ import annotations

import io

from PIL import Image

SAMPLES = ("airplane", "automobile", "cat", "dog", "frog", "ship")


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
    for name in SAMPLES:
        response = client.get(f"/static/samples/{name}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_an_unknown_static_file_is_404(client):
    assert client.get("/static/nope.js").status_code == 404


def test_the_page_is_not_in_the_openapi_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/audits" in paths
