"""Shadow audits: sampling at ACCSMOOTH_AUDIT_RATE, dropping (and counting) beyond the queue,
and the drift alarm flipping on a bundle whose surrogate over-claims, not on an honest one."""

from __future__ import annotations

import random
import threading
import time

import numpy as np

from server.http.schemas import SurrogateCertificate
from server.placeholder import probe_weights
from server.shadow.auditor import ShadowAuditor
from tests.server.helpers import SHAPE, metric, post_image, scrape, settings_for, solid

FAST = {"n0": 20, "n": 1000, "alpha": 0.001}
# The probe base model with threshold -1/2 names class 0 for every bright image under noise:
# Monte-Carlo certifies a larger radius than the surrogate serves, so the surrogate is honest.
HONEST_BASE = probe_weights(SHAPE, pixel=0, w=100.0, t=-0.5, k=3)


def wait_audits(shadow: ShadowAuditor, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while shadow.done < count or shadow.pending:
        assert time.monotonic() < deadline, f"{shadow.done} of {count} audits done"
        time.sleep(0.02)


def served_answer(client, value: int = 230):
    data = solid(value)
    body = post_image(client, data).json()
    image = np.full(SHAPE, value / 255.0, dtype=np.float32)
    return data, image, SurrogateCertificate(**body)


def test_no_certify_answer_is_audited_at_the_default_rate_zero(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent)
    for _ in range(5):
        assert post_image(client, solid(230)).status_code == 200
    assert client.app.state.shadow.done == 0 and client.app.state.shadow.pending == 0


def test_answers_are_chosen_at_the_audit_rate(make_bundle, start_client):
    client = start_client(make_bundle(protocol={"n0": 10, "n": 100, "alpha": 0.001}).parent)
    model = client.app.state.registry.get("tiny")
    data, image, served = served_answer(client)
    settings = settings_for(model.folder.parent, audit_rate=0.25, audit_queue=1000)
    shadow = ShadowAuditor(settings, rng=random.Random(7))
    chosen = sum(shadow.offer(model, image, data, served) for _ in range(400))
    reference = random.Random(7)
    assert chosen == sum(reference.random() < 0.25 for _ in range(400))
    assert 70 <= chosen <= 130
    wait_audits(shadow, chosen)
    assert shadow.done == chosen and shadow.dropped == 0
    shadow.shutdown()


def test_audits_beyond_the_queue_are_dropped_and_counted(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent)
    model = client.app.state.registry.get("tiny")
    data, image, served = served_answer(client)
    shadow = ShadowAuditor(settings_for(model.folder.parent, audit_rate=1.0, audit_queue=2))
    before = metric(scrape(client), "accsmooth_shadow_audits_dropped_total", model="tiny")
    gate = threading.Event()
    shadow._executor.submit(gate.wait, 10)  # the worker is busy: offers can only queue
    accepted = [shadow.offer(model, image, data, served) for _ in range(30)]
    gate.set()
    assert accepted == [True, True] + [False] * 28
    assert shadow.dropped == 28
    dropped = metric(scrape(client), "accsmooth_shadow_audits_dropped_total", model="tiny")
    assert dropped - before == 28
    wait_audits(shadow, 2)
    shadow.shutdown()


def test_shadow_audits_run_on_one_niced_thread_off_the_event_loop(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent, audit_rate=1.0, audit_nice=5)
    shadow = client.app.state.shadow
    seen = shadow._executor.submit(lambda: (threading.current_thread().name, _niceness())).result()
    assert seen[0].startswith("shadow-audit") and seen[1] >= 5
    assert _niceness() < seen[1]  # the test's (and the event loop's) thread kept its priority


def _niceness() -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_audits_update_the_metrics_with_source_shadow(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent, audit_rate=1.0)
    before = scrape(client)
    for _ in range(3):
        post_image(client, solid(230))
    wait_audits(client.app.state.shadow, 3)
    after = scrape(client)
    for name in (
        "accsmooth_audits_total",
        "accsmooth_audit_same_class_total",
        "accsmooth_audit_overestimated_total",
        "accsmooth_audit_radius_gap_count",
    ):
        delta = metric(after, name, model="tiny", source="shadow") - metric(
            before, name, model="tiny", source="shadow"
        )
        assert delta == 3, name  # the default tiny surrogate over-claims bright images
    assert metric(after, "accsmooth_overestimation_rate", model="tiny") == 1.0
    assert metric(after, "accsmooth_drift_window_audits", model="tiny") == 3


def test_an_over_claiming_surrogate_is_flagged_drifting_and_still_serves(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST).parent, audit_rate=1.0)
    for _ in range(4):
        post_image(client, solid(230))
    wait_audits(client.app.state.shadow, 4)
    drift = client.get("/models/tiny").json()["drift"]
    assert drift["drifting"] is True
    assert drift["audits"] == 4 and drift["overestimated"] == 4
    assert drift["epsilon"] == 0.05 and drift["p_value"] < drift["level"] == 0.01
    assert drift["rate_lower"] > drift["epsilon"]
    assert metric(scrape(client), "accsmooth_model_drifting", model="tiny") == 1
    assert client.get("/readyz").status_code == 200
    assert post_image(client, solid(230)).status_code == 200


def test_an_honest_surrogate_is_not_flagged(make_bundle, start_client):
    client = start_client(make_bundle(protocol=FAST, base=HONEST_BASE).parent, audit_rate=1.0)
    for _ in range(6):
        post_image(client, solid(230))
    wait_audits(client.app.state.shadow, 6)
    drift = client.get("/models/tiny").json()["drift"]
    assert drift["drifting"] is False and drift["audits"] == 6 and drift["overestimated"] == 0
    assert drift["p_value"] == 1.0
    assert metric(scrape(client), "accsmooth_model_drifting", model="tiny") == 0
