"""`server.http.fastpath`: raw-body POST /certify answered in front of the router gives exactly the
route's answers and errors, and every other request still reaches the route. The route is
reached with a multipart upload of the same image, which the fast path never takes."""

from __future__ import annotations

import pytest

from server.http.fastpath import fast_query
from tests.server.helpers import solid

PNG = {"content-type": "image/png"}


def without_latency(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "latency_ms"}


def route_answer(client, image: bytes, params: str = ""):
    return client.post(f"/certify{params}", files={"image": ("x.png", image, "image/png")})


@pytest.mark.parametrize("value", [230, 20, 128])  # certify, other class, abstain
@pytest.mark.parametrize("params", ["", "?calibrated=false", "?model=tiny&mode=surrogate"])
def test_the_fast_answer_is_the_routes_answer(client, value, params):
    fast = client.post(f"/certify{params}", content=solid(value), headers=PNG)
    route = route_answer(client, solid(value), params)
    assert fast.status_code == route.status_code == 200
    assert fast.headers["content-type"] == route.headers["content-type"] == "application/json"
    assert list(fast.json()) == list(route.json())  # same fields in the same order
    assert without_latency(fast.json()) == without_latency(route.json())


@pytest.mark.parametrize(
    ("image", "params"),
    [
        (solid(230, size=(9, 9)), ""),  # wrong size: 422
        (b"not an image", ""),  # undecodable: 400
        (b"", ""),  # empty body
        (solid(230), "?model=nope"),  # unknown model: 404
    ],
)
def test_fast_errors_are_the_routes_errors(client, image, params):
    fast = client.post(f"/certify{params}", content=image, headers=PNG)
    route = route_answer(client, image, params)
    assert fast.status_code == route.status_code >= 400
    assert fast.json() == route.json()


@pytest.mark.parametrize(
    "query",
    [
        b"mode=hybrid",
        b"calibrated=maybe",
        b"calibrated=1&calibrated=0",
        b"model=",
        b"x=1",
        b"radius=-1",
        b"radius=nan",
        b"radius=big",
        b"radius=0.5&model=tiny",
    ],
)
def test_unusual_queries_are_left_to_the_route(query):
    assert fast_query(query) is None


def test_plain_queries_are_parsed_as_the_route_parses_them():
    assert fast_query(b"") == {"model": None, "radius": None, "calibrated": True, "resize": False}
    assert fast_query(b"model=tiny&calibrated=No&resize=on&mode=surrogate") == {
        "model": "tiny",
        "radius": None,
        "calibrated": False,
        "resize": True,
    }
    assert fast_query(b"radius=0.25")["radius"] == 0.25


def test_an_invalid_query_value_still_gets_the_routes_422(client):
    response = client.post("/certify?calibrated=maybe", content=solid(230), headers=PNG)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_parameter"


def test_the_fast_path_counts_its_answers_in_the_metrics(client):
    client.post("/certify", content=solid(230), headers=PNG)
    text = client.get("/metrics").text
    assert 'accsmooth_http_requests_total{endpoint="/certify",method="POST",status="200"}' in text
    assert 'accsmooth_certificates_total{endpoint="/certify"' in text
