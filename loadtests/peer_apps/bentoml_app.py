"""BentoML 1.4 serving `core.Certifier`: one `@bentoml.service` (one worker, the default), its
`certify` API on POST /certify taking the raw PNG body (a positional-only `bytes` argument is
BentoML's root input: the request body as is), answering the certificate's JSON fields.

    python -m loadtests.peer_apps.bentoml_app PORT

runs `bentoml serve` (its production server: a circus arbiter and one uvicorn worker) on
127.0.0.1:PORT, in this process.
"""

import os
import sys

import bentoml

from loadtests.peer_apps.core import Certifier


@bentoml.service(workers=1)
class CertifyService:
    def __init__(self) -> None:
        self.certifier = Certifier()

    @bentoml.api(route="/certify")
    def certify(self, image: bytes, /) -> dict:
        return self.certifier(image)


if __name__ == "__main__":
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        f"{__spec__.name}:CertifyService",
        "--host",
        "127.0.0.1",
        "--port",
        sys.argv[1],
    ]
    os.execv(sys.executable, command)
