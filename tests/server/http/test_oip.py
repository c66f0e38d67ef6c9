"""The Open Inference Protocol v2 routes, driven by `tritonclient[http]` (Triton's own client)
against a real `python -m server`: metadata, readiness, inference with the binary-data
extension and with JSON data, the request parameters, and errors in the protocol's shape. Each
answer is held to /certify's answer for the same image."""

from __future__ import annotations

import base64
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server.helpers import solid, tiny_server

IMAGES = [solid(230), solid(20), solid(128)]  # certified cat, certified dog, abstain
OUTPUTS = ("predicted_class", "certified_radius", "p_a", "p_a_lower", "abstained")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_server(tmp_path_factory.mktemp("oip")) as process:
        yield process


@pytest.fixture
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as c:
        yield c


def certify(server, image: bytes, query: str = "") -> dict:
    request = urllib.request.Request(
        f"{server.url}/certify{query}", data=image, headers={"content-type": "image/png"}
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def image_input(images, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    return tensor


def assert_matches_certify(result, server, images, query: str = "") -> None:
    got = {name: result.as_numpy(name) for name in OUTPUTS}
    for i, image in enumerate(images):
        expected = certify(server, image, query)
        cls = expected["predicted_class"]
        assert got["predicted_class"][i] == (-1 if cls is None else cls)
        assert bool(got["abstained"][i]) == expected["abstained"]
        for name in ("certified_radius", "p_a", "p_a_lower"):
            assert got[name][i] == pytest.approx(expected[name], abs=1e-12)


def test_server_and_model_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "accsmooth"
    assert client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUTS)


def test_infer_with_binary_data_answers_as_certify(client, server):
    result = client.infer("tiny", [image_input(IMAGES)])  # binary in and out (the default)
    assert result.as_numpy("predicted_class").dtype == np.int64
    assert result.as_numpy("abstained").tolist() == [False, False, True]
    assert_matches_certify(result, server, IMAGES)


def test_infer_with_json_data_answers_as_certify(client, server):
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    result = client.infer("tiny", [image_input(IMAGES, binary=False)], outputs=outputs)
    response = result.get_response()
    assert all("data" in output for output in response["outputs"])
    assert_matches_certify(result, server, IMAGES)


def test_the_calibrated_parameter_is_certifys(client, server):
    result = client.infer("tiny", [image_input(IMAGES[:1])], parameters={"calibrated": False})
    assert_matches_certify(result, server, IMAGES[:1], "?calibrated=false")
    calibrated = client.infer("tiny", [image_input(IMAGES[:1])])
    assert result.as_numpy("p_a_lower")[0] > calibrated.as_numpy("p_a_lower")[0]


def test_mode_hybrid_answers_with_a_certificate(client):
    result = client.infer("tiny", [image_input(IMAGES[:1])], parameters={"mode": "hybrid"})
    assert result.as_numpy("predicted_class").tolist() == [0]


@pytest.mark.parametrize(
    ("model", "images", "parameters", "status", "code"),
    [
        ("nope", IMAGES[:1], None, "404", "model_not_found"),
        ("tiny", [solid(230, size=(9, 9))], None, "422", "wrong_image_size"),
        ("tiny", [b"not an image"], None, "400", "not_an_image"),
        ("tiny", IMAGES[:1], {"mode": "fast"}, "422", "invalid_parameter"),
    ],
)
def test_errors_have_the_protocol_shape_and_certifys_status(
    client, model, images, parameters, status, code
):
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [image_input(images)], parameters=parameters)
    assert caught.value.status() == status
    assert caught.value.message().startswith(code + ": ")
