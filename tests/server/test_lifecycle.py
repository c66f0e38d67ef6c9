"""The bounded drain after SIGTERM (server.lifecycle), driven through a real app: audits already
admitted run on until the grace period ends and are then answered 503 `shutting_down`; new
audits are refused at once; /readyz says so; the fast path keeps answering meanwhile."""

from __future__ import annotations

import threading

from tests.server.helpers import post_image, solid

ENDLESS = {"n0": 10, "n": 10**12, "batch_size": 16, "seed": 1}  # no machine finishes it


def test_audits_running_at_the_end_of_the_grace_period_are_answered_503(models_dir, start_client):
    client = start_client(models_dir, graceful_timeout_s=0.5, max_samples=10**12)
    answers = []
    audit = threading.Thread(
        target=lambda: answers.append(
            post_image(client, solid(230), "/certify/sampled", params=ENDLESS)
        )
    )
    audit.start()
    pool = client.app.state.sampled
    while pool.admitted == 0:  # wait until the audit is in the pool
        audit.join(0.01)
    client.portal.call(client.app.state.drain.begin)
    assert client.get("/readyz").status_code == 503
    refused = post_image(client, solid(230), "/certify/sampled", params={"n": 100})
    assert refused.status_code == 503 and refused.json()["error"] == "shutting_down"
    assert post_image(client, solid(230)).status_code == 200  # the fast path still answers
    audit.join(60)
    assert not audit.is_alive(), "the audit outlived the grace period"
    (response,) = answers
    assert response.status_code == 503
    assert response.json()["error"] == "shutting_down"
    assert "ACCSMOOTH_GRACEFUL_TIMEOUT_S" in response.json()["detail"]
    assert response.headers["connection"] == "close"
