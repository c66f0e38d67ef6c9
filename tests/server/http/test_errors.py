"""The error table: every domain error has a status, subclasses inherit, bodies have one shape."""

from __future__ import annotations

import inspect

from server.http import errors


def all_errors():
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.AccsmoothError)
    ]


def test_every_domain_error_is_in_the_table_with_a_distinct_code():
    classes = all_errors()
    assert set(classes) == set(errors.STATUS)
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))


def test_client_errors_are_4xx_and_capacity_errors_are_429_or_503():
    assert errors.status_of(errors.WrongImageSize("x")) == 422
    assert errors.status_of(errors.BodyTooLarge("x")) == 413
    assert errors.status_of(errors.AuditQueueFull("x", retry_after=3)) == 429
    assert errors.status_of(errors.Overloaded("x")) == 503


def test_an_unlisted_subclass_inherits_its_base_status():
    class Special(errors.NotAnImage):
        code = "special"

    assert errors.status_of(Special("x")) == 400


def test_audit_queue_full_carries_retry_after_and_unauthorized_a_challenge():
    assert errors.AuditQueueFull("x", retry_after=0.2).headers == {"Retry-After": "1"}
    assert errors.Unauthorized("x").headers == {"WWW-Authenticate": "Bearer"}
    assert errors.error_body("code", "detail") == {"error": "code", "detail": "detail"}
