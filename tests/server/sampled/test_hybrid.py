"""/certify?mode=hybrid: the surrogate answers clear cases, Monte-Carlo the ones near 1/2, with
a sample size sized from the base model's measured throughput and ACCSMOOTH_HYBRID_BUDGET_MS.
The routing rule itself (accsmooth.smoothing.hybrid_route): tests/core/test_smoothing.py."""

from __future__ import annotations

import pytest

from accsmooth.sampling import MIN_N, MIN_N0, SAFETY
from accsmooth.smoothing import radius_from_p_lower
from server.placeholder import probe_weights
from tests.server.helpers import SHAPE, metric, post_image, scrape, solid

# The probe base model with threshold -2 names class 0 for every image of these tests under
# any noise that can occur: pixel 0 is >= 0.5, i.e. >= 10 sigma above the threshold, so each
# noisy sample names another class with probability ~1e-23 and CERTIFY's count is all of n
# whatever n the measured throughput allows (with the shadow tests' threshold -1/2, 4 sigma,
# one sample in ~50,000 missed and a fast machine's n of several thousand made that common)
HONEST_BASE = probe_weights(SHAPE, pixel=0, w=100.0, t=-2.0, k=3)


def hybrid(client, value: int, **params):
    response = post_image(client, solid(value), params={"mode": "hybrid", **params})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def honest(make_bundle, start_client):
    return start_client(make_bundle(base=HONEST_BASE).parent, hybrid_budget_ms=5.0)


def test_a_clear_certificate_is_answered_by_the_surrogate(honest):
    body = hybrid(honest, 140)  # surrogate p_a 0.66: calibrated bound 0.625 >= 0.55
    assert body["method"] == "surrogate" and body["mode"] == "hybrid"
    assert body["reason"] == "clear_certify" and body["n"] is None
    assert body["label"] == "cat" and body["certified_radius"] > 0
    plain = post_image(honest, solid(140)).json()
    assert body["certified_radius"] == plain["certified_radius"]
    assert body["surrogate_p_a_lower"] == plain["p_a_lower"]


def test_a_clear_abstention_is_answered_by_the_surrogate(honest):
    body = hybrid(honest, 128)  # surrogate p_a 0.34, no majority at all
    assert body["method"] == "surrogate" and body["reason"] == "clear_abstain"
    assert body["abstained"] is True


def test_a_certificate_near_the_boundary_falls_back_to_monte_carlo(honest):
    before = metric(scrape(honest), "accsmooth_hybrid_answers_total", method="monte_carlo")
    body = hybrid(honest, 135)  # surrogate p_a 0.537: calibrated bound 0.50 < 0.55
    assert body["method"] == "monte_carlo" and body["reason"] == "boundary"
    assert body["surrogate_p_a_lower"] < 0.55
    plan = honest.get("/models/tiny").json()["hybrid"]
    assert (body["n0"], body["n"], body["alpha"]) == (plan["n0"], plan["n"], 0.001)
    # the honest base model names class 0 under all noise: CERTIFY's largest radius at this n
    assert body["label"] == "cat" and not body["abstained"]
    best = radius_from_p_lower(0.001 ** (1 / body["n"]), 0.25)
    assert body["certified_radius"] == pytest.approx(best, rel=1e-9)
    assert body["p_a_lower"] > 0.5 and isinstance(body["seed"], int)
    after = metric(scrape(honest), "accsmooth_hybrid_answers_total", method="monte_carlo")
    assert after - before == 1


def test_the_fallback_sample_size_follows_the_measured_throughput_and_budget(honest):
    plan = honest.get("/models/tiny").json()["hybrid"]
    assert plan["budget_ms"] == 5.0 and plan["margin"] == 0.05
    assert plan["samples_per_second"] > 0
    total = int(0.005 * plan["samples_per_second"] * SAFETY)
    assert plan["n0"] == min(100, max(MIN_N0, total // 20))
    assert plan["n"] == min(10_000, max(MIN_N, total - plan["n0"]))


def test_the_default_mode_is_still_the_surrogate(honest):
    body = post_image(honest, solid(135)).json()
    assert body["method"] == "surrogate" and "reason" not in body


def test_an_unknown_mode_is_422(client):
    response = post_image(client, solid(135), params={"mode": "magic"})
    assert response.status_code == 422 and response.json()["error"] == "invalid_parameter"


def test_hybrid_needs_the_api_key_when_one_is_set(make_bundle, start_client):
    client = start_client(make_bundle(base=HONEST_BASE).parent, api_key="s3cret")
    response = post_image(client, solid(135), params={"mode": "hybrid"})
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert "mode=hybrid" in response.json()["detail"]
    assert post_image(client, solid(135)).status_code == 200  # the surrogate mode stays open
    headers = {"authorization": "Bearer s3cret", "content-type": "image/png"}
    keyed = client.post("/certify", content=solid(135), headers=headers, params={"mode": "hybrid"})
    assert keyed.status_code == 200


def test_protect_hybrid_false_leaves_hybrid_open_unless_certify_is_protected(
    make_bundle, start_client
):
    models = make_bundle(base=HONEST_BASE).parent
    client = start_client(models, api_key="s3cret", protect_hybrid=False)
    assert post_image(client, solid(140), params={"mode": "hybrid"}).status_code == 200


def test_fallbacks_run_niced_like_audits(honest):
    import os
    import threading

    async def niceness():
        nice = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # noqa: E731
        value, _, _ = await honest.app.state.hybrid.submit(nice)
        return value, nice()

    fallback, loop = honest.portal.call(niceness)
    assert fallback == min(19, loop + honest.app.state.settings.sampled_nice)


def test_a_full_fallback_queue_answers_503_with_retry_after(make_bundle, start_client):
    import threading

    from server.sampled.pool import SampledJob

    client = start_client(
        make_bundle(base=HONEST_BASE).parent, hybrid_concurrency=1, hybrid_queue=0
    )
    gate = threading.Event()

    async def occupy():
        client.app.state.hybrid.submit(lambda: gate.wait(10), SampledJob(10**6))

    client.portal.call(occupy)
    try:
        response = post_image(client, solid(135), params={"mode": "hybrid"})
        assert response.status_code == 503 and response.json()["error"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
        assert hybrid(client, 140)["method"] == "surrogate"  # clear cases need no fallback
    finally:
        gate.set()
