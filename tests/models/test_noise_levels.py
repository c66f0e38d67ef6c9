"""Every committed bundle (one or more per noise level) is consistent with its evidence, and the
server serves them side by side: /models lists each with its sigma, and ?radius=R answers with
the bundle whose report certifies R best on its evaluation images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from tests.server.helpers import settings_for, solid, wait_ready

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (ROOT / "models").iterdir() if (p / "manifest.json").is_file())
PNG = {"content-type": "image/png"}


def _report(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_each_bundle_reports_what_its_evidence_gives(bundle):
    from exporter import tables

    assert tables.differences(bundle) == []
    sigma = json.loads((bundle / "manifest.json").read_text())["sigma"]
    # cifar10-sigma<sigma>, or with a suffix naming what else it carries (-probes: a probe head)
    dataset, level = bundle.name.split("-")[:2]
    assert dataset == "cifar10" and level in (f"sigma{sigma:g}", f"sigma{sigma}")
    assert _report(bundle)["sigma"] == sigma


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    for bundle in BUNDLES:
        (models / bundle.name).symlink_to(bundle)
    with TestClient(create_app(settings_for(models, default_model="cifar10-sigma0.25"))) as c:
        wait_ready(c)
        yield c


def test_models_lists_every_noise_level(client):
    listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert sorted(listed) == [b.name for b in BUNDLES]
    for bundle in BUNDLES:
        m = listed[bundle.name]
        assert m["status"] == "ready" and m["sigma"] == _report(bundle)["sigma"]
        table = _report(bundle)["certified_accuracy"]["surrogate_calibrated"]
        for radius, accuracy in table.items():  # the server's evidence gives the report's table
            assert m["served_certified_accuracy"][radius] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.parametrize("radius", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_radius_picks_the_bundle_whose_report_certifies_it_best(client, radius):
    served = {
        b.name: _report(b)["certified_accuracy"]["surrogate_calibrated"].get(f"{radius:g}", 0.0)
        for b in BUNDLES
    }
    response = client.post(f"/certify?radius={radius}", content=solid(128, (32, 32)), headers=PNG)
    if max(served.values()) == 0:
        assert response.status_code == 422
        assert response.json()["error"] == "radius_out_of_reach"
        return
    assert response.status_code == 200, response.text
    best = max(served.values())
    assert served[response.json()["model"]] == best
