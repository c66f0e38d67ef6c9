"""GET /audits: recent shadow audits, newest first, with image hashes and both certificates."""

from __future__ import annotations

import datetime as dt
import hashlib

from tests.server.helpers import post_image, solid
from tests.server.shadow.test_auditor import FAST, wait_audits


def test_audits_lists_the_newest_results_first_with_both_certificates(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent, audit_rate=1.0)
    images = [solid(230), solid(240), solid(20)]
    for data in images:
        assert post_image(client, data).status_code == 200
    wait_audits(client.app.state.shadow, 3)
    response = client.get("/audits", params={"limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["done"] == 3 and body["dropped"] == 0 and body["pending"] == 0
    newest, second = body["audits"]
    assert newest["image_sha256"] == hashlib.sha256(images[2]).hexdigest()
    assert second["image_sha256"] == hashlib.sha256(images[1]).hexdigest()
    assert newest["model"] == "tiny" and newest["source"] == "shadow"
    assert newest["surrogate"]["label"] == "dog" and newest["surrogate"]["method"] == "surrogate"
    mc = newest["monte_carlo"]
    assert (mc["n0"], mc["n"], mc["alpha"]) == (20, 1000, 0.001) and sum(mc["counts"]) == 1000
    assert set(newest["agreement"]) == {"same_class", "radius_gap", "overestimated"}
    served_at = dt.datetime.fromisoformat(newest["time"])
    assert abs((dt.datetime.now(dt.timezone.utc) - served_at).total_seconds()) < 60


def test_audits_is_empty_when_shadow_auditing_is_off(client):
    post_image(client, solid(230))
    body = client.get("/audits").json()
    assert body == {"audits": [], "done": 0, "dropped": 0, "pending": 0}


def test_audits_can_be_filtered_by_model(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent, audit_rate=1.0)
    post_image(client, solid(230))
    wait_audits(client.app.state.shadow, 1)
    assert len(client.get("/audits", params={"model": "tiny"}).json()["audits"]) == 1
    assert client.get("/audits", params={"model": "other"}).json()["audits"] == []


def test_a_limit_below_one_is_422(client):
    response = client.get("/audits", params={"limit": 0})
    assert response.status_code == 422 and response.json()["error"] == "invalid_parameter"


def test_audits_needs_the_api_key_when_one_is_set(models_dir, start_client):
    client = start_client(models_dir, api_key="s3cret")
    assert client.get("/audits").status_code == 401
    ok = client.get("/audits", headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
