"""LitServe 0.2 serving `core.Certifier` on POST /predict, body {"image": "<base64 PNG>"}
(LitServe parses every request body as JSON).

python -m loadtests.peer_apps.litserve_app PORT
"""

import base64
import sys

import litserve as ls

from loadtests.peer_apps.core import Certifier


class CertifyAPI(ls.LitAPI):
    def setup(self, device):
        self.certify = Certifier()

    def decode_request(self, request):
        return base64.b64decode(request["image"])

    def predict(self, data):
        return self.certify(data)

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    ls.LitServer(CertifyAPI(), accelerator="cpu", workers_per_device=1).run(
        port=int(sys.argv[1]), generate_client_file=False
    )
