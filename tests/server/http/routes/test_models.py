"""GET /models and /models/{name}: manifest facts and the provider in use."""

from __future__ import annotations

from tests.server.helpers import CALIBRATION, CLASSES


def test_models_lists_each_bundle_with_status_and_provider(client):
    response = client.get("/models")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "tiny"
    (model,) = body["models"]
    assert model["name"] == "tiny" and model["status"] == "ready" and model["error"] is None
    assert model["classes"] == list(CLASSES) and model["input_shape"] == [3, 8, 8]
    assert model["sigma"] == 0.25 and model["calibrated"] is True
    assert model["providers"] == {
        "surrogate": "CPUExecutionProvider",
        "base": "CPUExecutionProvider",
    }


def test_model_detail_shows_protocol_calibration_and_evaluation(client):
    body = client.get("/models/tiny").json()
    assert body["protocol"] == {"n0": 100, "n": 10_000, "alpha": 0.001}
    assert body["calibration"]["shift"] == CALIBRATION["shift"]
    assert body["calibration"]["epsilon"] == CALIBRATION["epsilon"]
    assert body["noise"] == "gaussian" and body["evaluation"] is None
    assert body["exporter"] == {"tool": "server.placeholder"}


def test_an_unknown_model_detail_is_404(client):
    response = client.get("/models/nope")
    assert response.status_code == 404
    assert response.json() == {
        "error": "model_not_found",
        "detail": "no model named 'nope'; available: tiny",
    }


def test_a_failed_bundle_is_listed_with_its_error(make_bundle, start_client):
    folder = make_bundle()
    (folder / "base.onnx").write_bytes(b"junk")
    body = start_client(folder.parent).get("/models/tiny").json()
    assert body["status"] == "failed" and "base.onnx: sha256 mismatch" in body["error"]
