"""Ray Serve 2.60 serving `core.Certifier`: one deployment, one replica, behind Serve's HTTP
proxy on POST /certify with the raw PNG body, answering the certificate's JSON fields.

    python -m loadtests.peer_apps.rayserve_app PORT

This process is the driver: `ray.init` starts a local cluster kept small for a 2-core machine
(2 CPUs, no dashboard, a 200 MB object store, its own temporary folder), then Serve's
controller, proxy and the replica (Serve's defaults: 1 CPU, 5 ongoing requests) run as Ray
actors. `PEER_RAY_MAX_ONGOING=N` raises the replica's ongoing-request limit from Serve's 5 (a
second, labelled row of the bench). SIGTERM shuts Serve and Ray down; `loadtests.peers` also
kills whatever is left of the process tree (raylet, gcs_server, workers).
"""

import os
import shutil
import signal
import sys
import tempfile
import threading

import ray
from ray import serve
from starlette.requests import Request

from loadtests.peer_apps.core import Certifier


@serve.deployment(num_replicas=1)
class CertifyDeployment:
    def __init__(self) -> None:
        self.certifier = Certifier()

    async def __call__(self, request: Request) -> dict:
        return self.certifier(await request.body())


def main(port: int) -> None:
    temp = tempfile.mkdtemp(prefix="ray-peer-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        _temp_dir=temp,
        configure_logging=False,
    )
    stop = threading.Event()  # after ray.init, which installs its own SIGTERM handler
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = CertifyDeployment
        if os.environ.get("PEER_RAY_MAX_ONGOING"):
            limit = int(os.environ["PEER_RAY_MAX_ONGOING"])
            deployment = deployment.options(max_ongoing_requests=limit)
        serve.run(deployment.bind(), route_prefix="/certify")
        stop.wait()
    finally:
        # No serve.shutdown(): under the bench's SIGTERM to the whole process group the Ray
        # processes are going already, and it would wait for a controller that is gone.
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
