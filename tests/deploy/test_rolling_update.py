"""Rolling a new bundle through two replicas behind a real load balancer, under load, drops no
request: the multi-replica check of docs/deploy-kubernetes.md, on this machine.

Two `python -m server` processes serve bundle version 1.0.0 behind HAProxy, which health-checks
them on /readyz (the readiness probe). Clients send /certify through HAProxy without pause.
Each replica in turn, as a Kubernetes rolling update does with a pod:

  1. out of rotation (HAProxy `drain`, as the endpoint removal during the preStop sleep);
     wait until its in-flight requests are answered;
  2. SIGTERM; it drains and exits; the other replica carries the load alone meanwhile;
  3. started again on the same port with version 2.0.0 and put back in rotation at once:
     HAProxy sends it traffic only after its /readyz answers 200 (a server still loading
     would answer 503), as readiness gates a new pod;
  4. the next replica only once this one is UP (maxUnavailable 0).

Asserted: every request answered 200 with a certificate (0 failed), the answers switch from
model_version 1.0.0 to 2.0.0 (both seen during the rollout, only 2.0.0 after it), load ran
while each replica was down. No timing assertion: every wait is for an event, with a bound.

    .venv/bin/python -m pytest -m integration tests/deploy -s     # prints the figures
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from loadtests.serve import ServerProcess, free_port
from server.placeholder import write_bundle
from tests.deploy.balancer import HAPROXY, Balancer
from tests.server.helpers import CALIBRATION, CLASSES, SHAPE, solid

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        HAPROXY is None, reason="haproxy not installed (Debian: apt-get install -y haproxy)"
    ),
]

CLIENTS = 4
SERVER_ENV = {
    "ACCSMOOTH_PROVIDERS": "CPUExecutionProvider",
    "ACCSMOOTH_INTRA_OP_THREADS": "1",
    "ACCSMOOTH_LOG_LEVEL": "info",
}
WHILE_DOWN = 20  # answers the clients must get while a replica is out, before it comes back
AFTER = 40  # answers after the rollout, all of which must be the new version
WAIT_S = 120.0  # bound on every wait for an event


def write_models(folder: Path, version: str) -> Path:
    """A models folder holding the tiny bundle `tiny` at `version`."""
    bundle = folder / "tiny"
    write_bundle(bundle, classes=CLASSES, shape=SHAPE, calibration=CALIBRATION)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = version  # the manifest is not among the hashed files
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


class Launched(ServerProcess):
    """A ServerProcess whose start() returns as soon as the process runs: the balancer's
    health check, not the test, decides when it gets traffic."""

    def wait_ready(self) -> None:
        return None


class Load:
    """CLIENTS threads sending /certify back to back through the balancer on keep-alive
    connections; every answer is recorded in completion order as (status, model_version)."""

    def __init__(self, url: str, body: bytes):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.body = body
        self.answers: list[tuple[int | str, str | None]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]

    def client(self) -> None:
        conn = None
        while not self.stopping.is_set():
            conn = conn or http.client.HTTPConnection(self.host, int(self.port), timeout=30)
            try:
                conn.request("POST", "/certify", self.body, {"content-type": "image/png"})
                response = conn.getresponse()
                data = response.read()
                answer = json.loads(data) if response.status == 200 else {}
                ok = response.status == 200 and "certified_radius" in answer
                record = (
                    response.status if ok else f"{response.status} {data[:200]!r}",
                    answer.get("model_version"),
                )
            except (http.client.HTTPException, OSError) as error:
                record, conn = (f"error {error!r}", None), None
            with self.lock:
                self.answers.append(record)

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} answers of {n}"
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def test_rolling_a_new_bundle_through_two_replicas_under_load_fails_no_request(tmp_path: Path):
    old = write_models(tmp_path / "models-1.0.0", "1.0.0")
    new = write_models(tmp_path / "models-2.0.0", "2.0.0")
    ports = {"r1": free_port(), "r2": free_port()}
    replicas = {
        name: ServerProcess(old, port=port, env=SERVER_ENV, log_path=tmp_path / f"{name}-1.log")
        for name, port in ports.items()
    }
    events: list[tuple[str, int]] = []  # (what happened, answers so far)
    try:
        for replica in replicas.values():
            replica.start()
        with Balancer(ports, tmp_path, timeout=WAIT_S) as lb, Load(lb.url, solid(200)) as load:
            load.wait_for(WHILE_DOWN)
            events.append(("rollout starts", load.count()))
            for name, port in ports.items():
                lb.set_state(name, "drain")
                lb.wait(lambda s, n=name: s[n]["scur"] == 0, f"{name} drained")
                events.append((f"{name} out of rotation", load.count()))
                exit_code = replicas[name].stop()  # SIGTERM: drains, shuts down cleanly
                assert exit_code in (0, -signal.SIGTERM), replicas[name].log()
                lb.wait(lambda s, n=name: s[n]["status"].startswith("DOWN"), f"{name} DOWN")
                down = load.count()
                load.wait_for(down + WHILE_DOWN)  # the other replica serves alone
                replicas[name] = Launched(
                    new, port=port, env=SERVER_ENV, log_path=tmp_path / f"{name}-2.log"
                ).start()
                lb.set_state(name, "ready")  # in rotation once its health check passes
                lb.wait_up(name)
                events.append((f"{name} back with 2.0.0", load.count()))
            done = load.count()
            load.wait_for(done + AFTER)
        answers = list(load.answers)  # every client has stopped
    finally:
        for replica in replicas.values():
            replica.stop()

    failures = [status for status, _ in answers if status != 200]
    versions = [version for _, version in answers]
    first_new = versions.index("2.0.0") if "2.0.0" in versions else None
    last_old = max(i for i, v in enumerate(versions) if v == "1.0.0")
    print(
        f"\n{len(answers)} requests answered, {len(failures)} failed; first 2.0.0 answer"
        f" #{first_new}, last 1.0.0 answer #{last_old}; events: {events}"
    )
    bad = [i for i, (status, _) in enumerate(answers) if status != 200]
    haproxy_log = (tmp_path / "haproxy.log").read_text()[-3000:]
    assert failures == [], f"failed answers #{bad[:3]}..#{bad[-3:]}: {failures[:3]}\n{haproxy_log}"
    start = events[0][1]
    assert set(versions[:start]) == {"1.0.0"}
    assert first_new is not None and first_new > start
    assert last_old < done  # nothing old once both replicas are back
    assert set(versions[done:]) == {"2.0.0"}
    assert len(versions[done:]) >= AFTER
