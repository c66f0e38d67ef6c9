"""/metrics: the service's own metrics appear with the right labels and move with traffic."""

from __future__ import annotations

import numpy as np

from tests.server.helpers import encode, metric, post_image, scrape, solid


def test_certify_traffic_shows_in_every_fast_path_metric(client):
    before = scrape(client)
    for value in (230, 20, 128):  # cat, dog, abstain
        assert post_image(client, solid(value)).status_code == 200
    assert post_image(client, b"nope", ctype="text/plain").status_code == 415
    after = scrape(client)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    ep = {"endpoint": "/certify"}
    assert delta("accsmooth_http_requests_total", status="200", method="POST", **ep) == 3
    assert delta("accsmooth_http_requests_total", status="415", **ep) == 1
    assert delta("accsmooth_request_seconds_count", model="tiny", **ep) == 3
    assert delta("accsmooth_queue_seconds_count", model="tiny", **ep) == 3
    assert delta("accsmooth_compute_seconds_count", model="tiny", **ep) == 3
    assert delta("accsmooth_batch_size_count", model="tiny") == 3
    assert delta("accsmooth_certificates_total", method="surrogate", **ep) == 3
    assert delta("accsmooth_abstentions_total", method="surrogate", **ep) == 1
    assert delta("accsmooth_certified_radius_count", **ep) == 2
    assert metric(after, "accsmooth_http_requests_in_flight", **ep) == 0


def test_latency_histograms_have_millisecond_and_minute_buckets(client):
    post_image(client, solid(230))
    samples = scrape(client)
    buckets = {
        dict(labels)["le"]
        for (name, labels) in samples
        if name == "accsmooth_request_seconds_bucket" and dict(labels)["endpoint"] == "/certify"
    }
    assert {"0.001", "0.003", "60.0", "600.0"} <= buckets


def test_audits_count_samples_and_agreement(client):
    pixels = np.full((8, 8, 3), 51, np.uint8)
    pixels[0, 0, 0] = 200
    before = scrape(client)
    response = post_image(client, encode(pixels), "/certify/sampled", params={"n": 1000, "n0": 10})
    assert response.status_code == 200
    after = scrape(client)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("accsmooth_audits_total", model="tiny", source="request") == 1
    assert delta("accsmooth_audit_overestimated_total", model="tiny") == 1  # surrogate: dog
    assert delta("accsmooth_audit_same_class_total", model="tiny") == 0
    assert delta("accsmooth_noise_samples_total", model="tiny") == 1010
    ep = {"endpoint": "/certify/sampled"}
    assert delta("accsmooth_compute_seconds_count", model="tiny", **ep) == 1
    assert delta("accsmooth_certificates_total", method="monte_carlo", **ep) == 1
    assert metric(after, "accsmooth_sampled_queue_depth") == 0
    assert metric(after, "accsmooth_sampled_running") == 0


def test_model_info_names_the_provider_and_readiness(client):
    samples = scrape(client)
    assert (
        metric(
            samples,
            "accsmooth_model_info",
            model="tiny",
            graph="surrogate",
            provider="CPUExecutionProvider",
        )
        == 1
    )
    assert metric(samples, "accsmooth_model_ready", model="tiny") == 1


def test_made_up_paths_do_not_grow_label_cardinality(client):
    for i in range(3):
        client.get(f"/nothing/{i}")
    samples = scrape(client)
    endpoints = {
        dict(labels)["endpoint"]
        for (name, labels) in samples
        if name == "accsmooth_http_requests_total"
    }
    assert "other" in endpoints and not any(e.startswith("/nothing") for e in endpoints)
