"""/docs and /redoc load their scripts from this server (no CDN); HEAD works on the probes."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_load_every_script_and_style_from_this_server(client, path):
    page = client.get(path)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and not [a for a in assets if "://" in a or a.startswith("//")], assets
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert "cdn" not in page.text.lower()


PROBES = ["/livez", "/readyz", "/models", "/models/tiny", "/v2/health/live", "/v2/health/ready"]


@pytest.mark.parametrize("path", PROBES)
def test_head_answers_like_get_without_a_body(client, path):
    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == client.get(path).headers["content-type"]
