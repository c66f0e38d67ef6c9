"""The committed default bundle, models/cifar10-sigma0.25, served over HTTP on real test images.

The images are CIFAR-10 test files (JPEG, as a user would send them), committed with the tiny
slice under tests/data/cifar10-tiny; the expected classes are their true labels. They were picked
as images the evaluation certifies, so a regression in decoding, normalization, the served rule
or the bundle shows up as a wrong class or an abstention here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from exporter.samples import SMALL
from server.http.app import create_app
from tests.server.helpers import settings_for, wait_ready

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "models" / "cifar10-sigma0.25"
TEST_IMAGES = ROOT / "tests" / "data" / "cifar10-tiny" / "test"
CASES = ["airplane/0162", "automobile/0270", "bird/0378", "cat/0648", "frog/0270", "truck/0504"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    (models / BUNDLE.name).symlink_to(BUNDLE)  # only the default bundle, whatever else is there
    with TestClient(create_app(settings_for(models))) as c:
        wait_ready(c)
        yield c


def _jpeg(case: str) -> bytes:
    return (TEST_IMAGES / f"{case}.jpg").read_bytes()


@pytest.mark.parametrize("case", CASES)
def test_real_test_image_is_certified_with_its_true_class(client, case):
    response = client.post("/certify", files={"image": ("x.jpg", _jpeg(case), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "cifar10-sigma0.25" and body["calibrated"] is True
    assert body["abstained"] is False and body["label"] == case.split("/")[0]
    assert 0 < body["certified_radius"] <= 0.25 * 3.3  # below sigma * Phi^-1(alpha^(1/n))


SAMPLES = ROOT / "server" / "static" / "samples"


@pytest.mark.parametrize(
    "sample", json.loads((SAMPLES / "samples.json").read_text()), ids=lambda s: s["file"]
)
def test_the_web_pages_samples_get_the_certificate_their_caption_promises(client, sample):
    png = (SAMPLES / sample["file"]).read_bytes()
    body = client.post("/certify", files={"image": ("x.png", png, "image/png")}).json()
    if sample["kind"] == "abstains":
        assert body["abstained"] is True
        return
    assert body["label"] == sample["label"]
    assert body["certified_radius"] == pytest.approx(sample["radius"], abs=1e-3)
    if sample["kind"] == "clear":
        assert body["certified_radius"] >= 0.4
    else:
        assert 0 < body["certified_radius"] < SMALL


def test_sampled_audit_agrees_with_the_fast_path_on_an_easy_image(client):
    response = client.post(
        "/certify/sampled",
        params={"seed": 0},
        files={"image": ("x.jpg", _jpeg("ship/0162"), "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["n"] == 10_000 and sum(body["counts"]) == 10_000
    assert body["label"] == "ship" and body["certified_radius"] > 0.75
    assert body["agreement"]["same_class"] is True
    assert body["agreement"]["overestimated"] is False
    assert body["surrogate"]["label"] == "ship"


def test_models_endpoint_reports_the_bundle_protocol_and_evaluation(client):
    body = client.get("/models/cifar10-sigma0.25").json()
    assert body["sigma"] == 0.25
    assert body["protocol"] == {"n0": 100, "n": 10_000, "alpha": 0.001}
    assert body["calibration"]["epsilon"] == 0.01
    assert body["evaluation"]["images"] == 500


def test_every_report_table_and_the_shift_are_recomputed_from_the_committed_evidence():
    from exporter import tables

    assert tables.differences(BUNDLE) == []  # report.json, the ablation and the shift agree
    sets = tables.recompute(BUNDLE)
    assert {name: s["images"] for name, s in sets.items()} == {
        "calibration": 2000,
        "evaluation": 500,
        "holdout": 200,
    }
