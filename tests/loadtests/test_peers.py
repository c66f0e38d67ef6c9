"""`loadtests.peers` without installing any peer: the Triton request body is the one Triton's
own client sends, every peer row names an app that exists, and `stop()` also ends a descendant
that left the process group (as Ray's and PyTriton's helpers can)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import psutil
import pytest
from PIL import Image

from loadtests.peers import PEERS, Peer, PeerProcess, request_body
from loadtests.serve import REPO


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 60)).save(out, format="PNG")
    return out.getvalue()


def test_the_triton_body_carries_the_png_as_tritonclient_does():
    httpclient = pytest.importorskip("tritonclient.http")
    np = pytest.importorskip("numpy")
    image = png()
    body, headers = request_body(Peer("triton", [], "app", body="triton_binary"), image)

    size = int(headers["Inference-Header-Content-Length"])
    header, binary = json.loads(body[:size]), body[size:]
    assert header["inputs"][0]["datatype"] == "BYTES"
    assert struct.unpack("<I", binary[:4])[0] == len(image) and binary[4:] == image

    given = httpclient.InferInput("image", [1, 1], "BYTES")
    given.set_data_from_numpy(np.array([[image]], dtype=object))
    reference, reference_size = httpclient.InferenceServerClient.generate_request_body([given])
    assert header["inputs"] == json.loads(reference[:reference_size])["inputs"]
    assert binary == reference[reference_size:]


def test_every_peer_row_runs_an_app_that_exists_with_a_known_body():
    for peer in PEERS:
        if peer.app is None:
            assert peer.note, f"{peer.name}: no app and no note saying why"
            continue
        assert (REPO / "loadtests" / "peer_apps" / f"{peer.app}.py").exists(), peer.name
        assert peer.body in {"raw", "kserve_v1", "json_image", "triton_binary"}, peer.name


SPAWNER = """
import subprocess, time
child = subprocess.Popen(["sleep", "600"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stop_ends_a_descendant_that_left_the_process_group():
    server = PeerProcess.__new__(PeerProcess)  # no peer venv: the process is a stand-in
    server.process = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    child = psutil.Process(int(server.process.stdout.readline()))
    try:
        server.stop()
        _, alive = psutil.wait_procs([child], timeout=10)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        if child.is_running():
            child.kill()
    assert not alive, "a child in its own session outlived stop()"
