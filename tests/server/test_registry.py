"""Loading bundles: readiness, corrupt or inconsistent bundles refused with a message, defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from accsmooth.bundle import BundleError, read_manifest
from server.http.app import create_app
from server.placeholder import linear_graph
from server.registry import micro_batch
from server.settings import Settings
from tests.server.helpers import post_image, rehash, settings_for, solid

REPO = Path(__file__).resolve().parents[2]


def corrupt(folder, file="surrogate.onnx"):
    data = bytearray((folder / file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / file).write_bytes(bytes(data))


def readyz(client):
    response = client.get("/readyz")
    return response.status_code, response.json()


def test_readyz_is_503_until_bundles_are_loaded(models_dir):
    client = TestClient(create_app(settings_for(models_dir)))  # lifespan not started: no load
    status, body = readyz(client)
    assert status == 503 and body["error"] == "not_ready"
    assert body["detail"] == "model bundles are still loading"
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/livez").status_code == 200


def test_readyz_is_200_once_every_bundle_is_warmed_up(client):
    status, body = readyz(client)
    assert status == 200 and body == {"status": "ready", "models": {"tiny": "ready"}}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/health/live").json() == {"live": True}


def test_a_corrupt_bundle_keeps_the_server_unready_with_the_file_and_problem(
    make_bundle, start_client, caplog
):
    make_bundle("good")
    corrupt(make_bundle("bad"))
    with caplog.at_level(logging.ERROR, logger="server"):
        client = start_client(make_bundle("good").parent)
    status, body = readyz(client)
    assert status == 503 and body["models"] == {"bad": "failed", "good": "ready"}
    assert "bad: " in body["detail"] and "surrogate.onnx: sha256 mismatch" in body["detail"]
    assert any("surrogate.onnx: sha256 mismatch" in r.getMessage() for r in caplog.records)
    refused = post_image(client, solid(250), params={"model": "bad"})
    assert refused.status_code == 503 and refused.json()["error"] == "model_not_ready"
    served = post_image(client, solid(250), params={"model": "good"})
    assert served.status_code == 200  # the good bundle is still served


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "base.onnx").unlink(), "base.onnx: missing"),
        (lambda f: (f / "manifest.json").unlink(), "manifest.json: missing"),
        (lambda f: (f / "manifest.json").write_text("[]"), "manifest.json: (top level)"),
    ],
)
def test_missing_files_are_named_in_readyz(make_bundle, start_client, damage, message):
    folder = make_bundle()
    damage(folder)
    status, body = readyz(start_client(folder.parent))
    assert status == 503 and message in body["detail"]


def test_a_surrogate_that_outputs_logits_is_refused_at_warm_up(make_bundle, start_client):
    folder = make_bundle()
    logits = linear_graph(
        np.zeros((192, 3)),
        np.array([5.0, 0.0, 0.0]),
        (3, 8, 8),
        softmax=False,
        names=("images", "probabilities"),
    )
    onnx.save(logits, folder / "surrogate.onnx")
    rehash(folder)  # a consistent bundle: only warm-up can notice
    status, body = readyz(start_client(folder.parent))
    assert status == 503 and "surrogate.onnx: outputs do not sum to 1" in body["detail"]


def test_a_folder_named_unlike_its_bundle_is_refused(make_bundle, start_client):
    folder = make_bundle("tiny", name="other")
    status, body = readyz(start_client(folder.parent))
    assert status == 503 and "name 'other' differs from its folder 'tiny'" in body["detail"]


def test_an_empty_models_folder_is_not_ready(tmp_path, start_client):
    (tmp_path / "models").mkdir()
    status, body = readyz(start_client(tmp_path / "models"))
    assert status == 503 and "no model bundles found" in body["detail"]


def test_the_default_model_is_the_first_by_name_unless_configured(make_bundle, start_client):
    make_bundle("b-model")
    models = make_bundle("a-model").parent
    assert start_client(models).get("/models").json()["default"] == "a-model"
    configured = start_client(models, default_model="b-model")
    assert configured.get("/models").json()["default"] == "b-model"
    assert post_image(configured, solid(250)).json()["model"] == "b-model"


def test_a_default_model_that_does_not_exist_is_not_ready(models_dir, start_client):
    status, body = readyz(start_client(models_dir, default_model="missing"))
    assert status == 503 and "ACCSMOOTH_DEFAULT_MODEL='missing' names no bundle" in body["detail"]


def test_a_broken_bundle_is_named_by_the_bundle_never_by_its_path_on_disk(
    make_bundle, start_client, tmp_path
):
    folder = make_bundle()
    (folder / "surrogate.onnx").write_bytes(b"not onnx")
    rehash(folder)  # consistent hashes: onnxruntime itself refuses the file
    client = start_client(folder.parent)
    answers = [client.get("/readyz"), client.get("/models"), post_image(client, solid(250))]
    for response in answers:
        assert response.status_code in (200, 503)
        assert "tiny/surrogate.onnx" in response.text
        assert str(tmp_path) not in response.text and str(folder.resolve()) not in response.text


@pytest.mark.parametrize(
    ("bundle", "images"),
    [
        ("cifar10-sigma0.25", 32),
        ("cifar10-sigma0.25-probes", 32),  # 17 passes an image: 60 would fit
        ("cifar10-sigma0.25-probes256", 3),
        ("cifar10-sigma0.25-probes512", 1),  # 513 passes, recorded in its graph spec
        ("cifar10-sigma0.5-probes512", 1),
        ("cifar10-sigma1.0-probes512", 1),
    ],
)
def test_a_probe_bundles_micro_batches_hold_its_passes_per_call_not_its_images(bundle, images):
    manifest = read_manifest(REPO / "models" / bundle)
    assert micro_batch(manifest, Settings(max_batch=32, max_passes_per_call=1024)) == images
    assert micro_batch(manifest, Settings(max_batch=2, max_passes_per_call=1024)) <= 2
    assert micro_batch(manifest, Settings(max_batch=32, max_passes_per_call=1)) == 1  # never 0


def test_the_warm_up_and_the_batcher_use_the_bundles_micro_batch(make_bundle, start_client):
    plain = make_bundle("plain")
    probed = make_bundle("probed")  # its manifest says 255 probes: 256 passes per image
    manifest = json.loads((probed / "manifest.json").read_text())
    manifest["exporter"] = {"config": {"train_surrogate": {"probes": 255}}}
    (probed / "manifest.json").write_text(json.dumps(manifest))
    client = start_client(plain.parent, max_batch=8, max_passes_per_call=1024)
    models = client.app.state.registry.models
    assert models["plain"].max_batch == models["plain"].batcher.max_batch == 8
    assert models["probed"].max_batch == models["probed"].batcher.max_batch == 4
    assert post_image(client, solid(250), params={"model": "probed"}).status_code == 200


def test_the_graph_specs_passes_per_image_comes_before_the_exporter_config(make_bundle):
    folder = make_bundle("recorded")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["exporter"] = {"config": {"train_surrogate": {"probes": 255}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(folder).passes_per_image == 256  # older bundles: the config's probes
    manifest["graphs"]["surrogate"]["passes_per_image"] = 513
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(folder).passes_per_image == 513
    assert micro_batch(read_manifest(folder), Settings(max_batch=32)) == 1
    manifest["graphs"]["surrogate"]["passes_per_image"] = 0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="passes_per_image"):
        read_manifest(folder)
