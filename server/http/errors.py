"""Domain errors and the one table that maps them to HTTP statuses.

Pipeline code (decoding, bundles, batching, audits) raises these plain exceptions without
knowing about HTTP; `server.http.app` installs one handler that answers every one of them as
`{"error": "<code>", "detail": "<human message>"}` with the status from `STATUS`. To add an
error: subclass `AccsmoothError`, give it a `code`, and add a row to `STATUS`.
"""

from __future__ import annotations

import logging


class AccsmoothError(Exception):
    """Base of every error the service answers on purpose. `detail` is shown to the client."""

    code = "error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


# --- the request itself -----------------------------------------------------------------------
class EmptyBody(AccsmoothError):
    code = "empty_body"


class BodyTooLarge(AccsmoothError):
    code = "body_too_large"


class UnsupportedMediaType(AccsmoothError):
    code = "unsupported_media_type"


class MissingImage(AccsmoothError):
    code = "missing_image"


class TooManyImages(AccsmoothError):
    code = "too_many_images"


class InvalidParameter(AccsmoothError):
    code = "invalid_parameter"


class Unauthorized(AccsmoothError):
    code = "unauthorized"

    def __init__(self, detail: str):
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class RequestTimeout(AccsmoothError):
    """The client sent its headers or body too slowly; the connection is closed."""

    code = "request_timeout"

    def __init__(self, detail: str):
        super().__init__(detail, headers={"Connection": "close"})


class HeadersTooLarge(AccsmoothError):
    code = "headers_too_large"


class ClientDisconnected(AccsmoothError):
    """The client closed the connection before its answer; nobody reads this one (499)."""

    code = "client_disconnected"


# --- the image ------------------------------------------------------------------------------
class NotAnImage(AccsmoothError):
    code = "not_an_image"


class UnsupportedImageFormat(AccsmoothError):
    code = "unsupported_image_format"


class TruncatedImage(AccsmoothError):
    code = "truncated_image"


class CorruptImage(AccsmoothError):
    code = "corrupt_image"


class DecompressionBomb(AccsmoothError):
    code = "decompression_bomb"


class WrongImageSize(AccsmoothError):
    code = "wrong_image_size"


# --- models and capacity ----------------------------------------------------------------------
class ModelNotFound(AccsmoothError):
    code = "model_not_found"


class ModelNotReady(AccsmoothError):
    code = "model_not_ready"


class RadiusOutOfReach(AccsmoothError):
    """?radius=R: no loaded bundle certifies R on any of its evaluation images."""

    code = "radius_out_of_reach"


class Overloaded(AccsmoothError):
    """The fast-path queue is full: shed load now rather than queue without bound."""

    code = "overloaded"


class AuditQueueFull(AccsmoothError):
    """Every audit worker is busy and the audit queue is full; retry after `retry_after` s."""

    code = "audit_queue_full"

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = retry_after


class ShuttingDown(AccsmoothError):
    """The server is draining after SIGTERM: slow work past the grace period is cancelled."""

    code = "shutting_down"

    def __init__(self, detail: str):
        super().__init__(detail, headers={"Connection": "close"})


class InferenceFailed(AccsmoothError):
    code = "inference_failed"


# The one table. Subclasses not listed inherit their nearest listed base's status.
STATUS: dict[type[AccsmoothError], int] = {
    EmptyBody: 400,
    NotAnImage: 400,
    TruncatedImage: 400,
    CorruptImage: 400,
    Unauthorized: 401,
    ModelNotFound: 404,
    RequestTimeout: 408,
    BodyTooLarge: 413,
    DecompressionBomb: 413,
    UnsupportedMediaType: 415,
    UnsupportedImageFormat: 415,
    MissingImage: 422,
    TooManyImages: 422,
    InvalidParameter: 422,
    RadiusOutOfReach: 422,
    WrongImageSize: 422,
    AuditQueueFull: 429,
    HeadersTooLarge: 431,
    ClientDisconnected: 499,  # nginx's "client closed request": not a server error
    InferenceFailed: 500,
    ModelNotReady: 503,
    Overloaded: 503,
    ShuttingDown: 503,
    AccsmoothError: 500,
}


def status_of(error: AccsmoothError) -> int:
    """The HTTP status for `error`: its class's row in `STATUS`, else its nearest base's."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, detail: str) -> dict[str, str]:
    """The JSON body of every error answer."""
    return {"error": code, "detail": detail}


def log_answered(log: logging.Logger, method: str, path: str, status: int, error) -> None:
    """The one log line of an error answer worth one: 499 (the client left) at INFO, 5xx as a
    warning, nothing below 499 (the client's own mistake, already in its answer)."""
    if status >= 499:
        log.log(
            logging.INFO if status == 499 else logging.WARNING,
            "%s %s -> %d %s: %s",
            method,
            path,
            status,
            error.code,
            error.detail,
        )
