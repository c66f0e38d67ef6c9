"""?radius=R picks the bundle whose served certificates reach R on the most of its evaluation
images (read from each bundle's evidence.npz), on the fast path and the route alike."""

from __future__ import annotations

import io

import numpy as np
import pytest
from scipy.special import ndtri

from accsmooth.smoothing import certify_from_probabilities
from tests.server.helpers import CALIBRATION, solid

PNG = {"content-type": "image/png"}


def evidence(labels, top_probability: list[float], k: int = 3) -> bytes:
    """evidence.npz bytes: evaluation images whose surrogate gives its label `p` (others share
    the rest)."""
    probs = np.zeros((len(labels), k))
    for i, (y, p) in enumerate(zip(labels, top_probability, strict=True)):
        probs[i] = (1 - p) / (k - 1)
        probs[i, y] = p
    buffer = io.BytesIO()
    np.savez(buffer, evaluation_labels=np.asarray(labels), evaluation_probs=probs)
    return buffer.getvalue()


def served_radius(p: float, sigma: float) -> float:
    (cert,) = certify_from_probabilities([[p, 1 - p]], 10_000, 0.001, sigma, CALIBRATION["shift"])
    return cert.radius


@pytest.fixture
def two_sigmas(make_bundle, start_client):
    """'narrow' (sigma 0.25): every image correct at p = 0.999; 'wide' (sigma 1): half of them
    correct at p = 0.9, the others wrong."""
    labels = [0, 1] * 5
    make_bundle("narrow", sigma=0.25, extra_files={"evidence.npz": evidence(labels, [0.999] * 10)})
    wide = evidence(labels, [0.9] * 5 + [0.2] * 5)
    folder = make_bundle("wide", sigma=1.0, extra_files={"evidence.npz": wide})
    return start_client(folder.parent)


def test_the_served_radii_of_the_two_bundles_are_what_the_test_assumes():
    assert 0.6 < served_radius(0.999, 0.25) < 0.8 < 1.1 < served_radius(0.9, 1.0) < 1.3


@pytest.mark.parametrize(("radius", "chosen"), [(0.0, "narrow"), (0.5, "narrow"), (1.0, "wide")])
@pytest.mark.parametrize("raw_body", [True, False])  # the fast path, the route
def test_radius_picks_the_bundle_that_certifies_it_best(two_sigmas, radius, chosen, raw_body):
    url = f"/certify?radius={radius}"
    if raw_body:
        response = two_sigmas.post(url, content=solid(230), headers=PNG)
    else:
        response = two_sigmas.post(url, files={"image": ("x.png", solid(230), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == chosen


@pytest.mark.parametrize("raw_body", [True, False])
def test_a_radius_no_bundle_reaches_is_a_clear_422(two_sigmas, raw_body):
    kw = {"content": solid(230), "headers": PNG} if raw_body else {"files": {"image": solid(230)}}
    response = two_sigmas.post("/certify?radius=3", **kw)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "radius_out_of_reach"
    assert "no bundle certifies radius 3" in body["detail"]
    assert "narrow (sigma 0.25): 0.7" in body["detail"] and "wide (sigma 1): 1.2" in body["detail"]


@pytest.mark.parametrize("query", ["radius=0.5&model=wide", "radius=-1", "radius=nan", "radius=x"])
def test_bad_radius_queries_are_422(two_sigmas, query):
    response = two_sigmas.post(f"/certify?{query}", content=solid(230), headers=PNG)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_parameter"


def test_models_show_sigma_reach_and_served_accuracy(two_sigmas):
    models = {m["name"]: m for m in two_sigmas.get("/models").json()["models"]}
    assert models["narrow"]["sigma"] == 0.25 and models["wide"]["sigma"] == 1.0
    assert models["narrow"]["max_certifiable_radius"] == pytest.approx(
        0.25 * ndtri(0.001**1e-4), abs=1e-4
    )
    assert models["wide"]["served_certified_accuracy"]["1"] == 0.5
    assert models["narrow"]["served_certified_accuracy"]["1"] == 0.0
    assert models["narrow"]["served_certified_accuracy"]["0.5"] == 1.0


def test_without_evidence_the_manifest_table_is_a_lower_bound(client):
    """The tiny bundle has no evidence.npz: it is ranked by its manifest's evaluation table."""
    from server.registry import LoadedModel

    model = client.app.state.registry.get(None)
    table = {"0": 0.6, "0.5": 0.4, "1": 0.1}
    manifest = model.manifest.model_copy(
        update={"evaluation": {"certified_accuracy": {"surrogate_calibrated": table}}}
    )
    bare = LoadedModel("t", model.folder, status="ready", manifest=manifest)
    assert [bare.served_accuracy(r) for r in (0, 0.3, 0.5, 0.9, 1.0, 1.2)] == [
        0.6,
        0.4,
        0.4,
        0.1,
        0.1,
        0.0,
    ]
