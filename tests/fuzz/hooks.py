"""schemathesis hooks for `make fuzz`: the error-body check, and some valid images in the mix.

Loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS=tests.fuzz.hooks.

- `error_body_is_json`: every 4xx/5xx answer is a JSON object with a non-empty string `error`
  code and a non-empty string `detail` message (the shape of `server.http.errors.error_body`).
- Bodies: schemathesis generates random bytes for the image bodies, which only ever reach the
  decoder's 400s. A third of the image bodies are replaced by a real PNG (of the model's size
  or not), so that the query parameters, resizing and the certify pipeline are fuzzed too.
"""

from __future__ import annotations

import io
import json

import schemathesis
from hypothesis import strategies as st

# The placeholder bundle of `make fuzz` is CIFAR-sized; 8x8 exercises the wrong-size path.
SIZES = ((32, 32), (32, 32), (8, 8), (33, 31))


def png(width: int, height: int, rgb: tuple[int, int, int], mode: str) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height), rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


images = st.builds(
    png,
    st.sampled_from(SIZES).map(lambda s: s[0]),
    st.sampled_from(SIZES).map(lambda s: s[1]),
    st.tuples(*[st.integers(0, 255)] * 3),
    st.sampled_from(["RGB", "L", "RGBA", "P"]),
)


@schemathesis.hook
def flatmap_body(context, body):
    """Sometimes swap the generated image bytes (raw body or multipart field) for a real PNG."""
    if isinstance(body, (bytes, bytearray)):
        return st.one_of(st.just(body), st.just(body), images)
    if isinstance(body, dict) and "image" in body:
        field = body["image"]
        swapped = st.lists(images, min_size=1, max_size=4) if isinstance(field, list) else images
        return st.one_of(st.just(body), st.just(body), swapped.map(lambda v: {**body, "image": v}))
    return st.just(body)


@schemathesis.check
def error_body_is_json(ctx, response, case):
    """Every error answer is `{"error": <code>, "detail": <message>}` JSON."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(
            f"{response.status_code} answer is not JSON: {response.content[:200]!r}"
        ) from exc
    if not isinstance(body, dict):
        raise AssertionError(f"{response.status_code} error body is not an object: {body!r}")
    for key in ("error", "detail"):
        value = body.get(key)
        if not isinstance(value, str) or not value.strip():
            raise AssertionError(
                f"{response.status_code} error body has no {key!r} message: {body!r}"
            )
    return None
