"""Locust users for accsmooth: the fast path (/certify, /certify/batch) and the audit path.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8123            # web UI
    make loadtest                                                            # headless, gated

Images are real CIFAR-10 test pictures (`loadtests.images`; another ImageFolder through
`ACCSMOOTH_LOAD_IMAGES`), half re-encoded as PNG, sent as the raw body or as multipart.
Every answer is checked field by field (`catch_response`), not only its status: a 200 whose
certificate is inconsistent (a radius on an abstention, p_a_lower above p_a, a label that is
not the bundle's) is a failure. The one audit user runs small audits (`n` from
`ACCSMOOTH_LOAD_AUDIT_N`, default 500); a 429 `audit_queue_full` with its Retry-After header
is the server shedding by design, so it counts as a success under its own name.

Pacing: `ACCSMOOTH_LOAD_USER_RATE` requests/s per fast-path user (constant throughput; 0, the
default, means back to back). The runner (`loadtests/run_locust.py`) sets it for soak runs.
"""

from __future__ import annotations

import json
import os
import random
import sys
import uuid
from pathlib import Path

from locust import FastHttpUser, constant, constant_throughput, task

# `locust -f loadtests/locustfile.py` puts loadtests/ on the path, not the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.images import LoadImage, load_images  # noqa: E402

IMAGES: list[LoadImage] = load_images(limit=int(os.environ.get("ACCSMOOTH_LOAD_LIMIT", 500)))
USER_RATE = float(os.environ.get("ACCSMOOTH_LOAD_USER_RATE", 0))
AUDIT_N = int(os.environ.get("ACCSMOOTH_LOAD_AUDIT_N", 500))
BATCH = int(os.environ.get("ACCSMOOTH_LOAD_BATCH", 8))
API_KEY = os.environ.get("ACCSMOOTH_API_KEY", "")
AUTH = {"authorization": f"Bearer {API_KEY}"} if API_KEY else {}


def multipart(images: list[LoadImage]) -> tuple[bytes, str]:
    """A multipart/form-data body with one `image` file field per image."""
    boundary = uuid.uuid4().hex
    parts = []
    for i, image in enumerate(images):
        ext = "png" if image.content_type == "image/png" else "jpg"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.{ext}"'
            f"\r\nContent-Type: {image.content_type}\r\n\r\n".encode()
            + image.data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def certificate_problem(cert: dict, classes: list[str], method: str = "surrogate") -> str | None:
    """What is wrong with a certificate body, or None when it is consistent."""
    if cert.get("method") != method:
        return f"method {cert.get('method')!r}, expected {method!r}"
    radius, p_lower = cert.get("certified_radius"), cert.get("p_a_lower")
    if not isinstance(radius, (int, float)) or radius < 0:
        return f"certified_radius {radius!r}"
    if not isinstance(p_lower, (int, float)) or not 0 <= p_lower <= 1:
        return f"p_a_lower {p_lower!r}"
    if cert.get("abstained"):
        if radius != 0 or cert.get("predicted_class") is not None:
            return "an abstention with a class or a radius"
    else:
        k = cert.get("predicted_class")
        if not isinstance(k, int) or not 0 <= k < len(classes) or cert.get("label") != classes[k]:
            return f"class {k!r} / label {cert.get('label')!r} not in the bundle's classes"
        if radius <= 0 or p_lower <= 0.5:
            return f"certified without a radius (radius {radius}, p_a_lower {p_lower})"
    if method == "surrogate" and not cert.get("p_a", 0) >= p_lower:
        return f"p_a {cert.get('p_a')} below p_a_lower {p_lower}"
    return None


class _Accsmooth(FastHttpUser):
    abstract = True
    classes: list[str] = []

    def on_start(self) -> None:
        response = self.client.get("/models", name="/models")
        listing = response.json()
        default = next(m for m in listing["models"] if m["name"] == listing["default"])
        type(self).classes = default["classes"]

    def check(self, response, method: str = "surrogate", expect: int | None = None) -> None:
        """Fail the request unless it is a 200 with consistent certificate(s)."""
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        try:
            body = response.json()
        except json.JSONDecodeError:
            response.failure("the body is not JSON")
            return
        certs = body if isinstance(body, list) else [body]
        if expect is not None and len(certs) != expect:
            response.failure(f"{len(certs)} certificates for {expect} images")
            return
        for cert in certs:
            problem = certificate_problem(cert, self.classes, method)
            if problem:
                response.failure(problem)
                return
        response.success()


class CertifyUser(_Accsmooth):
    """The fast path, one image per request: mostly raw bodies, some multipart."""

    weight = 10
    wait_time = constant_throughput(USER_RATE) if USER_RATE > 0 else constant(0)

    @task(4)
    def certify_raw(self) -> None:
        image = random.choice(IMAGES)
        headers = {"content-type": image.content_type}
        with self.client.post(
            "/certify", data=image.data, headers=headers, catch_response=True, name="/certify"
        ) as response:
            self.check(response)

    @task(1)
    def certify_multipart(self) -> None:
        body, ctype = multipart([random.choice(IMAGES)])
        with self.client.post(
            "/certify",
            data=body,
            headers={"content-type": ctype},
            catch_response=True,
            name="/certify [multipart]",
        ) as response:
            self.check(response)


class BatchUser(_Accsmooth):
    """/certify/batch with ACCSMOOTH_LOAD_BATCH images per request."""

    weight = 1
    wait_time = constant_throughput(USER_RATE / BATCH) if USER_RATE > 0 else constant(0)

    @task
    def certify_batch(self) -> None:
        body, ctype = multipart(random.sample(IMAGES, BATCH))
        with self.client.post(
            "/certify/batch",
            data=body,
            headers={"content-type": ctype},
            catch_response=True,
            name="/certify/batch",
        ) as response:
            self.check(response, expect=BATCH)


class AuditUser(_Accsmooth):
    """One user running small Monte-Carlo audits, one every few seconds."""

    fixed_count = 1
    wait_time = constant(float(os.environ.get("ACCSMOOTH_LOAD_AUDIT_PAUSE", 2.0)))

    @task
    def audit(self) -> None:
        image = random.choice(IMAGES)
        n0 = max(10, AUDIT_N // 10)
        with self.client.post(
            f"/certify/sampled?n0={n0}&n={AUDIT_N}&seed={random.randrange(2**31)}",
            data=image.data,
            headers={"content-type": image.content_type, **AUTH},
            catch_response=True,
            name="/certify/sampled",
        ) as response:
            if response.status_code == 429 and response.headers.get("retry-after"):
                response.success()  # shed by design; the server says when to come back
                return
            self.check(response, method="monte_carlo")
            body = response.json() if response.status_code == 200 else {}
            if body and sum(body.get("counts", [])) != AUDIT_N:
                response.failure(f"counts sum to {sum(body['counts'])}, not n={AUDIT_N}")
