"""OpenAPI fragments: the request bodies FastAPI cannot infer and the shared error responses.

/certify reads its body by hand (multipart *or* raw image), so the schema is declared here;
it is what `/docs` shows and what a schema fuzzer (schemathesis) generates requests from.
"""

from __future__ import annotations

from server.http.schemas import ErrorResponse

_BINARY = {"type": "string", "format": "binary"}
_RAW = {"schema": _BINARY}

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One PNG, JPEG, WebP or BMP image: multipart field `image`, or raw bytes.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": _BINARY},
                    "required": ["image"],
                }
            },
            "image/png": _RAW,
            "image/jpeg": _RAW,
            "image/webp": _RAW,
            "image/bmp": _RAW,
        },
    }
}

BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Up to ACCSMOOTH_MAX_BATCH images as repeated multipart fields `image`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "array", "items": _BINARY}},
                    "required": ["image"],
                }
            }
        },
    }
}

_ERROR = {"model": ErrorResponse}
ERRORS: dict[int | str, dict] = {
    400: _ERROR | {"description": "empty body, not an image, truncated or corrupt image"},
    401: _ERROR | {"description": "API key missing or wrong"},
    404: _ERROR | {"description": "unknown model"},
    408: _ERROR | {"description": "headers or body sent too slowly"},
    413: _ERROR | {"description": "body over the limit, or decompression bomb"},
    415: _ERROR | {"description": "content type or image format not supported"},
    422: _ERROR | {"description": "wrong image size, parameter out of range, missing image"},
    429: _ERROR | {"description": "audit queue full; see Retry-After"},
    431: _ERROR | {"description": "request line and headers too large"},
    503: _ERROR | {"description": "model not ready, queue full (Retry-After), or shutting down"},
}
