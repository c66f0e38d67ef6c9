"""The bad-input catalogue: well over 100 distinct malformed or unusual requests, each answered
with its specific 4xx and a JSON body `{"error": <code>, "detail": <what was wrong>}`: never a
5xx, never a hang, never a traceback in the body.

Two apps serve the catalogue (started once for the module): `open`, with default settings, and
`strict`, with an API key, /certify behind it, small body and pixel limits and a batch of 2.
Each case is (id, app, method, path, query, headers, body, status, code).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.http.app import create_app
from server.placeholder import write_bundle
from tests.server.helpers import (
    CALIBRATION,
    CLASSES,
    SHAPE,
    settings_for,
    solid,
    wait_ready,
)

KEY = "s3cret"
PNG = solid(200)
JPEG = solid(200, fmt="JPEG")
BMP = solid(200, fmt="BMP")
WEBP = solid(200, fmt="WEBP")
BOUNDARY = "cat4l0gue"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, *, depth=8, color=2, crc_ok=True) -> bytes:
    """A PNG signature and IHDR (optionally with a wrong CRC), one empty IDAT and IEND."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    if not crc_ok:
        ihdr = ihdr[:-4] + b"\0\0\0\0"
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")


def flip(data: bytes, at: int, count: int = 16) -> bytes:
    """`data` with `count` bytes inverted from `at` (negative: from the end)."""
    at = at % len(data)
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + count]) + data[at + count :]


def other_format(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, fmt)
    return buffer.getvalue()


def multipart(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    """A multipart body of (field name, filename or None for a text field, content)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\ncontent-disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


MP = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
RAW = {"content-type": "image/png"}
AUTH = {"authorization": f"Bearer {KEY}"}


def raw(ctype: str = "image/png") -> dict:
    return {"content-type": ctype}


# --- the catalogue: (id, app, method, path, query, headers, body, status, code) ----------------
IMAGES = [
    ("empty", b"", 400, "empty_body"),
    ("text", b"hello, not an image", 400, "not_an_image"),
    ("null-bytes", b"\0" * 64, 400, "not_an_image"),
    ("random-bytes", np.random.default_rng(0).bytes(512), 400, "not_an_image"),
    ("html", b"<html><body>cat</body></html>", 400, "not_an_image"),
    ("json", b'{"image": "cat.png"}', 400, "not_an_image"),
    ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 400, "not_an_image"),
    ("zip", b"PK\x03\x04" + b"\0" * 40, 400, "not_an_image"),
    ("png-signature-only", PNG[:8], 400, "truncated_image"),
    ("png-cut-in-ihdr", PNG[:20], 400, "truncated_image"),
    ("png-cut-after-ihdr", PNG[:33], 400, "truncated_image"),
    ("png-cut-in-idat", PNG[:45], 400, "truncated_image"),
    ("png-without-iend", PNG[:-12], 400, "truncated_image"),
    ("png-cut-in-iend", PNG[:-6], 400, "truncated_image"),
    ("png-bad-ihdr-crc", png_with_header(8, 8, crc_ok=False), 400, "truncated_image"),
    ("png-empty-idat", png_with_header(8, 8), 400, "truncated_image"),
    ("png-zero-width", png_with_header(0, 8), 400, "truncated_image"),
    ("png-bad-bit-depth", png_with_header(8, 8, depth=3), 400, "truncated_image"),
    ("png-bad-color-type", png_with_header(8, 8, color=5), 400, "truncated_image"),
    ("png-scrambled-idat", flip(PNG, 41), 400, "corrupt_image"),
    ("png-bomb-header", png_with_header(100_000, 100_000), 413, "decompression_bomb"),
    ("png-wide-header", png_with_header(1_000_000, 1), 422, "wrong_image_size"),
    ("png-9x9", solid(5, size=(9, 9)), 422, "wrong_image_size"),
    ("png-8x9", solid(5, size=(8, 9)), 422, "wrong_image_size"),
    ("png-1x1", solid(5, size=(1, 1)), 422, "wrong_image_size"),
    ("png-32x32", solid(5, size=(32, 32)), 422, "wrong_image_size"),
    ("jpeg-magic-only", JPEG[:3], 400, "truncated_image"),
    ("jpeg-cut-in-header", JPEG[:100], 400, "truncated_image"),
    ("jpeg-cut-in-data", JPEG[:-40], 400, "truncated_image"),
    ("jpeg-9x9", solid(5, size=(9, 9), fmt="JPEG"), 422, "wrong_image_size"),
    ("bmp-magic-only", BMP[:2], 400, "truncated_image"),
    ("bmp-cut-in-header", BMP[:20], 400, "truncated_image"),
    ("bmp-cut-in-pixels", BMP[:-50], 400, "truncated_image"),
    ("bmp-9x9", solid(5, size=(9, 9), fmt="BMP"), 422, "wrong_image_size"),
    ("webp-riff-only", WEBP[:12], 400, "truncated_image"),
    ("webp-cut", WEBP[: len(WEBP) // 2], 400, "corrupt_image"),
    ("webp-9x9", solid(5, size=(9, 9), fmt="WEBP"), 422, "wrong_image_size"),
    ("gif", other_format("GIF"), 415, "unsupported_image_format"),
    ("tiff", other_format("TIFF"), 415, "unsupported_image_format"),
    ("ico", other_format("ICO"), 415, "unsupported_image_format"),
    ("ppm", other_format("PPM"), 415, "unsupported_image_format"),
    ("tga", other_format("TGA"), 415, "unsupported_image_format"),
]

CASES: list[tuple] = [
    (f"image-{name}", "open", "POST", "/certify", {}, RAW, body, status, code)
    for name, body, status, code in IMAGES
] + [
    (f"sampled-image-{name}", "open", "POST", "/certify/sampled", {"n": 100}, RAW, body, s, c)
    for name, body, s, c in IMAGES[:8]
]

CASES += [
    # content types
    ("ctype-json", "open", "POST", "/certify", {}, raw("application/json"), PNG, 415,
     "unsupported_media_type"),
    ("ctype-text", "open", "POST", "/certify", {}, raw("text/plain"), PNG, 415,
     "unsupported_media_type"),
    ("ctype-octet-stream", "open", "POST", "/certify", {}, raw("application/octet-stream"), PNG,
     415, "unsupported_media_type"),
    ("ctype-form-urlencoded", "open", "POST", "/certify", {},
     raw("application/x-www-form-urlencoded"), b"image=cat", 415, "unsupported_media_type"),
    ("ctype-image-without-subtype", "open", "POST", "/certify", {}, raw("image"), PNG, 415,
     "unsupported_media_type"),
    ("ctype-video", "open", "POST", "/certify", {}, raw("video/mp4"), PNG, 415,
     "unsupported_media_type"),
    ("ctype-none-with-body", "open", "POST", "/certify", {}, {}, PNG, 415,
     "unsupported_media_type"),
    ("ctype-none-no-body", "open", "POST", "/certify", {}, {}, b"", 422, "missing_image"),
    ("batch-raw-body", "open", "POST", "/certify/batch", {}, RAW, PNG, 415,
     "unsupported_media_type"),
    ("batch-no-body", "open", "POST", "/certify/batch", {}, {}, b"", 415,
     "unsupported_media_type"),
    ("sampled-ctype-json", "open", "POST", "/certify/sampled", {}, raw("application/json"), PNG,
     415, "unsupported_media_type"),
    # multipart
    ("mp-no-boundary", "open", "POST", "/certify", {}, raw("multipart/form-data"), PNG, 400,
     "bad_request"),
    ("mp-other-field", "open", "POST", "/certify", {}, MP, multipart(("photo", "a.png", PNG)),
     422, "missing_image"),
    ("mp-text-field", "open", "POST", "/certify", {}, MP, multipart(("image", None, b"cat")),
     422, "missing_image"),
    ("mp-empty-file", "open", "POST", "/certify", {}, MP, multipart(("image", "a.png", b"")),
     400, "empty_body"),
    ("mp-no-parts", "open", "POST", "/certify", {}, MP, f"--{BOUNDARY}--\r\n".encode(), 422,
     "missing_image"),
    ("mp-two-images", "open", "POST", "/certify", {}, MP,
     multipart(("image", "a.png", PNG), ("image", "b.png", PNG)), 422, "too_many_images"),
    ("mp-many-parts", "open", "POST", "/certify", {}, MP,
     multipart(*[("image", f"{i}.png", b"x") for i in range(1000)]), 422, "too_many_images"),
    ("mp-many-fields", "open", "POST", "/certify", {}, MP,
     multipart(*[(f"f{i}", None, b"x") for i in range(1000)]), 422, "too_many_images"),
    ("mp-gif-file", "open", "POST", "/certify", {}, MP,
     multipart(("image", "a.gif", other_format("GIF"))), 415, "unsupported_image_format"),
    ("mp-text-file", "open", "POST", "/certify", {}, MP, multipart(("image", "a.txt", b"hi")),
     400, "not_an_image"),
    ("mp-wrong-size", "open", "POST", "/certify", {}, MP,
     multipart(("image", "a.png", solid(5, size=(9, 9)))), 422, "wrong_image_size"),
    ("batch-no-image", "open", "POST", "/certify/batch", {}, MP,
     multipart(("photo", "a.png", PNG)), 422, "missing_image"),
    ("batch-one-empty", "open", "POST", "/certify/batch", {}, MP,
     multipart(("image", "a.png", PNG), ("image", "b.png", b"")), 400, "empty_body"),
    ("batch-one-truncated", "open", "POST", "/certify/batch", {}, MP,
     multipart(("image", "a.png", PNG), ("image", "b.png", PNG[:-12])), 400, "truncated_image"),
    ("batch-one-gif", "open", "POST", "/certify/batch", {}, MP,
     multipart(("image", "a.png", PNG), ("image", "b.gif", other_format("GIF"))), 415,
     "unsupported_image_format"),
    ("batch-one-wrong-size", "open", "POST", "/certify/batch", {}, MP,
     multipart(("image", "a.png", PNG), ("image", "b.png", solid(5, size=(9, 9)))), 422,
     "wrong_image_size"),
    ("batch-over-max", "strict", "POST", "/certify/batch", {}, {**MP, **AUTH},
     multipart(*[("image", f"{i}.png", PNG) for i in range(3)]), 422, "too_many_images"),
    ("batch-thousands-of-parts", "strict", "POST", "/certify/batch", {}, {**MP, **AUTH},
     multipart(*[("image", f"{i}.png", b"x") for i in range(5000)]), 413, "body_too_large"),
    # query parameters
    ("q-unknown-model", "open", "POST", "/certify", {"model": "nope"}, RAW, PNG, 404,
     "model_not_found"),
    ("q-model-path", "open", "POST", "/certify", {"model": "../../etc/passwd"}, RAW, PNG, 404,
     "model_not_found"),
    ("q-calibrated-maybe", "open", "POST", "/certify", {"calibrated": "maybe"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-resize-perhaps", "open", "POST", "/certify", {"resize": "perhaps"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-mode-magic", "open", "POST", "/certify", {"mode": "magic"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-mode-empty", "open", "POST", "/certify", {"mode": ""}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-batch-unknown-model", "open", "POST", "/certify/batch", {"model": "nope"}, MP,
     multipart(("image", "a.png", PNG)), 404, "model_not_found"),
    ("q-n-zero", "open", "POST", "/certify/sampled", {"n": 0}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n-negative", "open", "POST", "/certify/sampled", {"n": -5}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n-text", "open", "POST", "/certify/sampled", {"n": "many"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n-float", "open", "POST", "/certify/sampled", {"n": "1.5"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n-huge", "open", "POST", "/certify/sampled", {"n": 10**30}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n-over-max", "open", "POST", "/certify/sampled", {"n": 100_001}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n0-zero", "open", "POST", "/certify/sampled", {"n0": 0}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-n0-over-max", "open", "POST", "/certify/sampled", {"n0": 100_001}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-alpha-zero", "open", "POST", "/certify/sampled", {"alpha": 0}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-alpha-one", "open", "POST", "/certify/sampled", {"alpha": 1}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-alpha-negative", "open", "POST", "/certify/sampled", {"alpha": -0.1}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-alpha-nan", "open", "POST", "/certify/sampled", {"alpha": "nan"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-alpha-text", "open", "POST", "/certify/sampled", {"alpha": "low"}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-batch-size-zero", "open", "POST", "/certify/sampled", {"batch_size": 0}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-batch-size-over-max", "open", "POST", "/certify/sampled", {"batch_size": 10**6}, RAW,
     PNG, 422, "invalid_parameter"),
    ("q-seed-negative", "open", "POST", "/certify/sampled", {"seed": -1}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-seed-too-big", "open", "POST", "/certify/sampled", {"seed": 2**63}, RAW, PNG, 422,
     "invalid_parameter"),
    ("q-sampled-unknown-model", "open", "POST", "/certify/sampled", {"model": "nope"}, RAW, PNG,
     404, "model_not_found"),
    ("q-audits-limit-zero", "open", "GET", "/audits", {"limit": 0}, {}, b"", 422,
     "invalid_parameter"),
    ("q-audits-limit-text", "open", "GET", "/audits", {"limit": "all"}, {}, b"", 422,
     "invalid_parameter"),
    # methods and paths
    ("get-certify", "open", "GET", "/certify", {}, {}, b"", 405, "method_not_allowed"),
    ("put-certify", "open", "PUT", "/certify", {}, RAW, PNG, 405, "method_not_allowed"),
    ("delete-certify", "open", "DELETE", "/certify", {}, {}, b"", 405, "method_not_allowed"),
    ("patch-certify-batch", "open", "PATCH", "/certify/batch", {}, {}, b"", 405,
     "method_not_allowed"),
    ("get-certify-sampled", "open", "GET", "/certify/sampled", {}, {}, b"", 405,
     "method_not_allowed"),
    ("post-livez", "open", "POST", "/livez", {}, RAW, PNG, 405, "method_not_allowed"),
    ("post-readyz", "open", "POST", "/readyz", {}, {}, b"", 405, "method_not_allowed"),
    ("delete-models", "open", "DELETE", "/models", {}, {}, b"", 405, "method_not_allowed"),
    ("put-models-tiny", "open", "PUT", "/models/tiny", {}, {}, b"", 405, "method_not_allowed"),
    ("post-metrics", "open", "POST", "/metrics", {}, {}, b"", 405, "method_not_allowed"),
    ("unknown-path", "open", "GET", "/nope", {}, {}, b"", 404, "not_found"),
    ("unknown-nested-path", "open", "POST", "/certify/fast", {}, RAW, PNG, 404, "not_found"),
    ("dotdot-path", "open", "GET", "/static/../server/http/app.py", {}, {}, b"", 404, "not_found"),
    ("unknown-model-detail", "open", "GET", "/models/nope", {}, {}, b"", 404, "model_not_found"),
    ("unknown-static-file", "open", "GET", "/static/nope.js", {}, {}, b"", 404, "not_found"),
    # limits (strict app: 4 KiB bodies, 64 pixels)
    ("body-over-limit-declared", "strict", "POST", "/certify", {}, {**RAW, **AUTH},
     b"\0" * 5000, 413, "body_too_large"),
    ("body-over-limit-multipart", "strict", "POST", "/certify", {}, {**MP, **AUTH},
     multipart(("image", "a.png", b"\0" * 5000)), 413, "body_too_large"),
    ("pixels-over-limit", "strict", "POST", "/certify", {"resize": "true"}, {**RAW, **AUTH},
     solid(5, size=(16, 16)), 413, "decompression_bomb"),
    ("pixels-over-limit-batch", "strict", "POST", "/certify/batch", {"resize": "true"},
     {**MP, **AUTH}, multipart(("image", "a.png", solid(5, size=(16, 16)))), 413,
     "decompression_bomb"),
    # the API key (strict app)
    ("key-missing-certify", "strict", "POST", "/certify", {}, RAW, PNG, 401, "unauthorized"),
    ("key-wrong-certify", "strict", "POST", "/certify", {},
     {**RAW, "authorization": "Bearer nope"}, PNG, 401, "unauthorized"),
    ("key-basic-scheme", "strict", "POST", "/certify", {},
     {**RAW, "authorization": f"Basic {KEY}"}, PNG, 401, "unauthorized"),
    ("key-empty-bearer", "strict", "POST", "/certify", {}, {**RAW, "authorization": "Bearer "},
     PNG, 401, "unauthorized"),
    ("key-no-scheme", "strict", "POST", "/certify", {}, {**RAW, "authorization": KEY}, PNG, 401,
     "unauthorized"),
    ("key-case-differs", "strict", "POST", "/certify", {},
     {**RAW, "authorization": f"Bearer {KEY.upper()}"}, PNG, 401, "unauthorized"),
    ("key-missing-batch", "strict", "POST", "/certify/batch", {}, MP,
     multipart(("image", "a.png", PNG)), 401, "unauthorized"),
    ("key-missing-sampled", "strict", "POST", "/certify/sampled", {"n": 100}, RAW, PNG, 401,
     "unauthorized"),
    ("key-wrong-sampled", "strict", "POST", "/certify/sampled", {"n": 100},
     {**RAW, "authorization": "Bearer nope"}, PNG, 401, "unauthorized"),
    ("key-missing-audits", "strict", "GET", "/audits", {}, {}, b"", 401, "unauthorized"),
    ("key-missing-hybrid", "strict", "POST", "/certify", {"mode": "hybrid"}, RAW, PNG, 401,
     "unauthorized"),
]  # fmt: skip


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    models: Path = tmp_path_factory.mktemp("catalogue") / "models"
    write_bundle(models / "tiny", classes=CLASSES, shape=SHAPE, calibration=CALIBRATION)
    settings = {
        "open": settings_for(models),
        "strict": settings_for(
            models,
            api_key=KEY,
            protect_certify=True,
            max_body_bytes=4096,
            max_image_pixels=64,
            max_batch=2,
        ),  # fmt: skip
    }
    clients = {name: TestClient(create_app(s)) for name, s in settings.items()}
    for client in clients.values():
        client.__enter__()
        wait_ready(client)
    yield clients
    for client in clients.values():
        client.__exit__(None, None, None)


def test_the_catalogue_is_over_a_hundred_distinct_requests():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    assert len({repr(c[1:]) for c in CASES}) == len(CASES), "two cases send the same request"


@pytest.mark.parametrize(
    "app,method,path,query,headers,body,status,code",
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_gets_a_specific_4xx_with_a_json_error(
    apps, app, method, path, query, headers, body, status, code
):
    response = apps[app].request(method, path, params=query, headers=headers, content=body)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert (response.status_code, answer.get("error")) == (status, code), answer
    assert isinstance(answer["detail"], str) and answer["detail"].strip()
    assert "Traceback" not in answer["detail"]


def test_a_good_request_still_passes_through_both_apps(apps):
    assert apps["open"].post("/certify", content=PNG, headers=RAW).status_code == 200
    keyed = apps["strict"].post("/certify", content=PNG, headers={**RAW, **AUTH})
    assert keyed.status_code == 200
