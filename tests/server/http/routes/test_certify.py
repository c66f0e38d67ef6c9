"""POST /certify, /certify/batch, /certify/sampled end to end, and every bad input's answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from accsmooth.smoothing import certify_from_probabilities, clopper_pearson_lower
from tests.server.helpers import CLASSES, encode, post_image, solid


def expected(value: int, shift: float, c: float = 20.0):
    """The intensity surrogate's certificate for a solid image of `value` (n=10000, a=0.001)."""
    z = c * (value / 255.0 - 0.5)
    logits = np.array([z, -z, 0.0])
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return probs.max(), certify_from_probabilities(probs[None], 10_000, 0.001, 0.25, shift)[0]


def assert_error(response, status: int, code: str, fragment: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and fragment in body["detail"]


# --- the fast path --------------------------------------------------------------------------
def test_certify_answers_the_surrogate_certificate_for_a_raw_png(client):
    response = post_image(client, solid(230))
    assert response.status_code == 200
    body = response.json()
    p_a, cert = expected(230, shift=0.02)
    assert body["model"] == "tiny" and body["model_version"] == "0.0.1"
    assert body["method"] == "surrogate" and body["calibrated"] is True
    assert body["predicted_class"] == 0 and body["label"] == "cat" and not body["abstained"]
    assert body["p_a"] == pytest.approx(p_a, rel=1e-5)
    assert body["p_a_lower"] == pytest.approx(cert.p_a_lower, rel=1e-5)
    assert body["certified_radius"] == pytest.approx(cert.radius, rel=1e-4)
    assert body["sigma"] == 0.25 and body["resized"] is False
    assert 0 < body["latency_ms"] < 1000


def test_certify_accepts_the_multipart_field_image(client):
    response = client.post("/certify", files={"image": ("x.jpg", solid(20, fmt="JPEG"))})
    assert response.status_code == 200
    assert response.json()["label"] == "dog"


def test_calibrated_false_serves_the_raw_rule_with_a_larger_bound(client):
    calibrated = post_image(client, solid(230)).json()
    raw = post_image(client, solid(230), params={"calibrated": "false"}).json()
    assert raw["calibrated"] is False
    assert raw["p_a_lower"] > calibrated["p_a_lower"]
    # the shift (0.02) is on the normal-quantile scale: radii differ by exactly sigma * shift
    gap = raw["certified_radius"] - calibrated["certified_radius"]
    assert gap == pytest.approx(0.25 * 0.02, rel=1e-6)


def test_a_mid_grey_image_abstains_with_radius_zero(client):
    body = post_image(client, solid(128)).json()
    assert body["abstained"] is True and body["predicted_class"] is None
    assert body["label"] is None and body["certified_radius"] == 0.0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_images_are_served_as_rgb(client, mode):
    rgb = post_image(client, solid(230)).json()
    other = post_image(client, encode(np.full((8, 8, 3), 230, np.uint8), mode=mode)).json()
    assert other["predicted_class"] == rgb["predicted_class"]
    assert other["certified_radius"] == pytest.approx(rgb["certified_radius"], rel=1e-4)


def test_a_sixteen_bit_image_is_served(client):
    body = post_image(client, encode(np.full((8, 8), 60_000, np.uint16))).json()
    assert body["label"] == "cat"


def test_resize_true_serves_other_sizes_and_says_where_the_radius_lives(client):
    big = solid(230, size=(32, 24))
    assert_error(post_image(client, big), 422, "wrong_image_size", "image is 24x32")
    body = post_image(client, big, params={"resize": "true"}).json()
    assert body["resized"] is True and body["label"] == "cat"
    assert "after resizing your 24x32 image" in body["radius_space"]


def test_batch_answers_each_image_in_order(client):
    values = [230, 20, 128, 240, 10]
    files = [("image", (f"{i}.png", solid(v))) for i, v in enumerate(values)]
    response = client.post("/certify/batch", files=files)
    assert response.status_code == 200
    labels = [r["label"] for r in response.json()]
    assert labels == ["cat", "dog", None, "cat", "dog"]


def test_a_bad_image_in_a_batch_is_named_by_its_position(client):
    files = [
        ("image", ("a.png", solid(230))),
        ("image", ("b.png", b"")),
        ("image", ("c.png", solid(9))),
    ]
    response = client.post("/certify/batch", files=files)
    assert_error(response, 400, "empty_body", "image 2 of 3: the image is empty")


def test_batch_takes_multipart_only(client):
    response = post_image(client, solid(230), "/certify/batch")
    assert_error(response, 415, "unsupported_media_type", "multipart/form-data with file fields")


def test_batch_refuses_more_than_max_batch_images(models_dir, start_client):
    client = start_client(models_dir, max_batch=2)
    files = [("image", (f"{i}.png", solid(230))) for i in range(3)]
    response = client.post("/certify/batch", files=files)
    assert_error(response, 422, "too_many_images", "3 images sent, at most 2")


# --- bad input: one specific status and message each -----------------------------------------
@pytest.mark.parametrize(
    "data,ctype,status,code,fragment",
    [
        (b"", "image/png", 400, "empty_body", "empty"),
        (b"GIF? no, just text", "image/png", 400, "not_an_image", "not an image"),
        (solid(5)[:-20], "image/png", 400, "truncated_image", "PNG image is truncated"),
        (solid(5, fmt="JPEG")[:150], "image/jpeg", 400, "truncated_image", "JPEG"),
        (solid(5, fmt="GIF"), "image/gif", 415, "unsupported_image_format", "GIF images"),
        (solid(5), "application/json", 415, "unsupported_media_type", "application/json"),
        (solid(5), "text/plain", 415, "unsupported_media_type", "image/*"),
        (solid(5, size=(9, 9)), "image/png", 422, "wrong_image_size", "image is 9x9"),
    ],
)
def test_bad_input_gets_its_specific_status_and_message(
    client, data, ctype, status, code, fragment
):
    assert_error(post_image(client, data, ctype=ctype), status, code, fragment)


def test_a_decompression_bomb_is_refused(models_dir, start_client):
    client = start_client(models_dir, max_image_pixels=1000)
    response = post_image(client, solid(5, size=(40, 40)))
    assert_error(response, 413, "decompression_bomb", "1600 pixels, over the limit of 1000")


def test_a_body_over_the_limit_is_refused_with_413(models_dir, start_client):
    client = start_client(models_dir, max_body_bytes=2048)
    response = post_image(client, b"\x89PNG" + bytes(4096))
    assert_error(response, 413, "body_too_large", "over the limit of 2048")


def test_a_streamed_body_without_length_over_the_limit_is_refused_with_413(
    models_dir, start_client
):
    client = start_client(models_dir, max_body_bytes=2048)
    chunks = iter([b"\x89PNG" + bytes(1020)] * 8)  # chunked upload: no Content-Length
    response = client.post("/certify", content=chunks, headers={"content-type": "image/png"})
    assert_error(response, 413, "body_too_large", "over the limit of 2048")


def test_a_missing_image_field_is_422(client):
    response = client.post("/certify", files={"picture": ("x.png", solid(5))})
    assert_error(response, 422, "missing_image", "field 'image' is missing")
    response = client.post("/certify", data={"image": "not a file"}, files={"x": ("x", b"1")})
    assert_error(response, 422, "missing_image", "must be a file upload")
    assert_error(client.post("/certify"), 422, "missing_image", "no body")


def test_an_unknown_model_is_404(client):
    response = post_image(client, solid(5), params={"model": "nope"})
    assert_error(response, 404, "model_not_found", "no model named 'nope'; available: tiny")


# --- the audit path ---------------------------------------------------------------------------
def probe_image(value: float = 0.6) -> bytes:
    pixels = np.full((8, 8, 3), 51, np.uint8)  # 0.2 everywhere ...
    pixels[0, 0, 0] = round(value * 255)  # ... but the probed pixel (channel 0, row 0, col 0)
    return encode(pixels)


def test_sampled_counts_and_bound_match_the_known_probability(client):
    x = round(0.6 * 255) / 255
    p0 = norm.cdf((x - 0.5) / 0.25)
    params = {"n0": 100, "n": 10_000, "alpha": 0.001, "seed": 3, "batch_size": 500}
    response = post_image(client, probe_image(), "/certify/sampled", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "monte_carlo" and body["seed"] == 3 and body["n"] == 10_000
    counts = body["counts"]
    assert sum(counts) == 10_000 and sum(body["counts0"]) == 100
    assert abs(counts[0] - 10_000 * p0) < 5 * np.sqrt(10_000 * p0 * (1 - p0))
    assert body["predicted_class"] == 0 and body["label"] == "cat"
    assert body["p_a_lower"] == pytest.approx(clopper_pearson_lower(counts[0], 10_000, 0.001))
    assert body["p_a_lower"] < p0
    assert body["certified_radius"] == pytest.approx(0.25 * norm.ppf(body["p_a_lower"]))
    assert body["samples_per_second"] > 0


def test_sampled_includes_the_surrogate_answer_and_their_agreement(client):
    body = post_image(client, probe_image(), "/certify/sampled", params={"n": 2000}).json()
    surrogate = body["surrogate"]
    assert surrogate["method"] == "surrogate" and surrogate["label"] == CLASSES[1]  # dark: dog
    agreement = body["agreement"]
    assert agreement["same_class"] is False  # the probe says cat, the surrogate dog
    assert agreement["overestimated"] is True  # a certified wrong class over-claims
    gap = surrogate["certified_radius"] - body["certified_radius"]
    assert agreement["radius_gap"] == pytest.approx(gap)


def test_a_fixed_seed_reproduces_the_audit(client):
    def run(seed):
        params = {"n0": 50, "n": 3000, "seed": seed}
        return post_image(client, probe_image(), "/certify/sampled", params=params).json()

    first, again, other = run(11), run(11), run(12)
    assert first["counts"] == again["counts"] and first["counts0"] == again["counts0"]
    assert first["p_a_lower"] == again["p_a_lower"]
    assert other["counts"] != first["counts"]


def test_sampled_defaults_come_from_the_manifest_and_a_seed_is_returned(client):
    body = post_image(client, probe_image(), "/certify/sampled").json()
    assert (body["n0"], body["n"], body["alpha"]) == (100, 10_000, 0.001)
    assert isinstance(body["seed"], int)


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"n0": 0}, "n0: Input should be greater than or equal to 1"),
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"n": 100_001}, "n=100001 is over the limit of 100000"),
        ({"alpha": 0}, "alpha: Input should be greater than 0"),
        ({"alpha": 1}, "alpha: Input should be less than 1"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"batch_size": 10**6}, "batch_size=1000000 is over the limit"),
        ({"n": "many"}, "n: Input should be a valid integer"),
    ],
)
def test_sampled_parameters_out_of_range_are_422(client, params, fragment):
    response = post_image(client, probe_image(), "/certify/sampled", params=params)
    assert_error(response, 422, "invalid_parameter", fragment)


def test_a_full_audit_queue_answers_429_with_retry_after(models_dir, start_client):
    import threading

    client = start_client(models_dir, sampled_concurrency=1, sampled_queue=0)
    gate = threading.Event()

    async def occupy():
        client.app.state.sampled.submit(lambda: gate.wait(10))

    client.portal.call(occupy)
    try:
        response = post_image(client, probe_image(), "/certify/sampled", params={"n": 100})
        assert_error(response, 429, "audit_queue_full", "1 audits running or queued")
        assert int(response.headers["retry-after"]) >= 1
        assert post_image(client, solid(230)).status_code == 200  # the fast path is unaffected
    finally:
        gate.set()


def test_the_api_key_guards_the_audit_path(models_dir, start_client):
    client = start_client(models_dir, api_key="s3cret")
    path, params = "/certify/sampled", {"n": 100}
    response = post_image(client, probe_image(), path, params=params)
    assert_error(response, 401, "unauthorized", "Bearer")
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = {"authorization": "Bearer nope", "content-type": "image/png"}
    assert client.post(path, content=probe_image(), headers=wrong, params=params).status_code == 401
    right = {"authorization": "Bearer s3cret", "content-type": "image/png"}
    assert client.post(path, content=probe_image(), headers=right, params=params).status_code == 200
    assert post_image(client, solid(230)).status_code == 200  # /certify stays open by default


def test_protect_certify_puts_the_fast_path_behind_the_key_too(models_dir, start_client):
    client = start_client(models_dir, api_key="s3cret", protect_certify=True)
    assert_error(post_image(client, solid(230)), 401, "unauthorized", "/certify needs")
    headers = {"authorization": "Bearer s3cret", "content-type": "image/png"}
    assert client.post("/certify", content=solid(230), headers=headers).status_code == 200


def test_a_body_of_thousands_of_parts_is_refused_after_the_batch_size(models_dir, start_client):
    client = start_client(models_dir, max_batch=2)
    boundary = "b0undary"
    part = f'--{boundary}\r\ncontent-disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    body = (part.encode() + b"x\r\n") * 99_000 + f"--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/certify/batch", content=body, headers=headers)
    assert_error(response, 422, "too_many_images", "more than 3 multipart parts sent")
    fields = (f'--{boundary}\r\ncontent-disposition: form-data; name="f"\r\n\r\nv\r\n') * 5000
    response = client.post(
        "/certify", content=fields.encode() + b"--b0undary--\r\n", headers=headers
    )
    assert_error(response, 422, "too_many_images", "at most 1 image per request")


def test_resize_bombs_in_a_batch_are_decoded_and_answered(models_dir, start_client):
    from tests.server.images.test_decoder import bomb

    client = start_client(models_dir, decode_pixel_budget=1024 * 1024)
    files = [("image", (f"{i}.webp", bomb(), "image/webp")) for i in range(4)]
    response = client.post("/certify/batch", files=files, params={"resize": "true"})
    assert response.status_code == 200
    assert [a["resized"] for a in response.json()] == [True] * 4
