"""KServe 0.21's Python model server serving `core.Certifier`.

    python -m loadtests.peer_apps.kserve_app PORT

POST /v1/models/accsmooth:predict with {"instances": ["<base64 PNG>"]} (KServe's v1 protocol).
"""

import base64
import sys

from kserve import Model, ModelServer

from loadtests.peer_apps.core import Certifier


class CertifyModel(Model):
    def load(self) -> bool:
        self.certify = Certifier()
        self.ready = True
        return self.ready

    async def predict(self, payload, headers=None):
        return {"predictions": [self.certify(base64.b64decode(x)) for x in payload["instances"]]}


if __name__ == "__main__":
    model = CertifyModel("accsmooth")
    model.load()
    ModelServer(http_port=int(sys.argv[1]), grpc_port=int(sys.argv[1]) + 1, workers=1).start(
        [model]
    )
