"""`make bench-peers`: accsmooth beside the serving frameworks a user would pick instead.

    python -m loadtests.peers                 # every peer that installs, 1/16/64 connections
    python -m loadtests.peers --peers litserve --seconds 5

Each peer serves the same certificate (`loadtests.peer_apps.core`: same decoding, surrogate,
rule and JSON fields) from its own virtual environment under `loadtests/.peers/<peer>` (git-
ignored; created and installed on first use), as a real server on a loopback port, started in
its own process group and stopped with the whole group (LitServe and PyTriton leave children).
accsmooth runs as `python -m server` with its defaults. All are driven by the same wrk runs
(`loadtests.wrk`) after a warm-up, with bare onnxruntime batch 1 measured first in the same run.
A peer that cannot be installed or started gets a row that says why. Writes
`loadtests/results/peers.json` and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from loadtests import wrk
from loadtests.images import load_images
from loadtests.serve import (
    REPO,
    ServerProcess,
    free_port,
    process_tree,
    single_bundle_dir,
    tree_cpu_seconds,
    tree_rss_mb,
)

PEERS_DIR = REPO / "loadtests" / ".peers"
COMMON = ["numpy", "scipy", "onnxruntime", "pillow", "pydantic>=2"]


@dataclass
class Peer:
    name: str
    packages: list[str]
    app: str | None  # module under loadtests/peer_apps, run as `python -m ... PORT`
    path: str = "/predict"
    # raw: the PNG; kserve_v1: {"instances": [b64]}; json_image: {"image": b64};
    # triton_binary: the Open Inference Protocol with the PNG as a binary BYTES tensor
    body: str = "raw"
    note: str = ""
    env: dict = field(default_factory=dict)
    venv: str = ""  # folder under loadtests/.peers (default: the name)

    @property
    def folder(self) -> Path:
        return PEERS_DIR / (self.venv or self.name)


PEERS = [
    Peer("litserve", ["litserve==0.2.19"], "litserve_app", body="json_image"),
    Peer("kserve", ["kserve==0.21.0"], "kserve_app", "/v1/models/accsmooth:predict", "kserve_v1"),
    Peer(
        "bentoml",
        ["bentoml==1.4.40"],
        "bentoml_app",
        "/certify",
        env={"BENTOML_DO_NOT_TRACK": "true"},
    ),
    Peer(
        "ray-serve",
        ["ray[serve]==2.60.0"],
        "rayserve_app",
        "/certify",
        env={"RAY_USAGE_STATS_ENABLED": "0"},
    ),
    Peer(  # Serve's default of 5 ongoing requests per replica queues the rest in the proxy
        "ray-serve (max_ongoing_requests=64)",
        ["ray[serve]==2.60.0"],
        "rayserve_app",
        "/certify",
        env={"RAY_USAGE_STATS_ENABLED": "0", "PEER_RAY_MAX_ONGOING": "64"},
        venv="ray-serve",
    ),
    Peer(
        "triton (pytriton)",
        ["nvidia-pytriton==0.7.0"],
        "pytriton_app",
        "/v2/models/accsmooth/infer",
        "triton_binary",
    ),
]


def install(peer: Peer) -> str | None:
    """Create the peer's venv and install it; None when ready, else why it failed."""
    venv = peer.folder
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *peer.packages, *COMMON],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return "pip install failed: " + done.stderr.strip().splitlines()[-1][:200]
    return None


def request_body(peer: Peer, image: bytes) -> tuple[bytes, dict]:
    if peer.body == "kserve_v1":
        body = json.dumps({"instances": [base64.b64encode(image).decode()]}).encode()
        return body, {"Content-Type": "application/json"}
    if peer.body == "json_image":
        body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
        return body, {"Content-Type": "application/json"}
    if peer.body == "triton_binary":
        # Open Inference Protocol request, the PNG as one BYTES element with Triton's binary-data
        # extension (what tritonclient sends): the JSON header, then the element (4-byte length).
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(image) + 4},
                    }
                ]
            },
            separators=(",", ":"),
        ).encode()
        body = header + struct.pack("<I", len(image)) + image
        return body, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
    return image, {"Content-Type": "image/png"}


class PeerProcess:
    """A peer server in its own process group; `stop()` ends the whole group."""

    def __init__(self, peer: Peer, bundle: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"PYTHONPATH": str(REPO), "PEER_BUNDLE": str(bundle)} | peer.env
        python = peer.folder / "bin" / "python"
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [str(python), "-m", f"loadtests.peer_apps.{peer.app}", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, path: str, body: bytes, headers: dict, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                request = urllib.request.Request(self.url + path, data=body, headers=headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(0.5)
        raise TimeoutError(f"no 200 on {path} within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.process.pid)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after 15 s; then SIGKILL what is left of the process tree
        as it was before: a descendant that made its own session or group (Ray's raylet and
        workers, PyTriton's tritonserver) is out of the group's reach."""
        tree = process_tree(self.process.pid)[1:]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for p in list(tree):
            with contextlib.suppress(psutil.Error):
                tree += p.children(recursive=True)
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(tree, timeout=10)


def measure_peer(peer: Peer, bundle: Path, image: bytes, args) -> dict:
    row: dict = {"peer": peer.name, "packages": peer.packages}
    if peer.app is None:
        return row | {"skipped": peer.note}
    problem = install(peer)
    if problem:
        return row | {"skipped": problem}
    body, headers = request_body(peer, image)
    log = Path(tempfile.gettempdir()) / f"peer-{peer.name.split()[0]}.log"
    server = PeerProcess(peer, bundle, log)
    try:
        server.wait_ready(peer.path, body, headers)
        row["rss_mib"] = round(server.rss_mb(), 1)
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(body)
        row["rows"] = wrk.measure(
            server, peer.path, Path(f.name), args.connections, args.seconds, args.warmup, headers
        )
        os.unlink(f.name)
    except (RuntimeError, TimeoutError, OSError) as exc:
        row["skipped"] = f"did not start: {exc}"
    finally:
        server.stop()
    return row


def measure_accsmooth(bundle: Path, image: bytes, args) -> dict:
    models = single_bundle_dir(bundle)
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
        f.write(image)
    with ServerProcess(models, workers=args.workers) as server:
        rows = wrk.measure(
            server, "/certify", Path(f.name), args.connections, args.seconds, args.warmup
        )
        row = {"peer": "accsmooth", "rss_mib": round(server.rss_mb(), 1), "rows": rows}
        row["workers"] = args.workers or "default"
    os.unlink(f.name)
    return row


def print_table(report: dict) -> None:
    conns = report["connections"]
    head = " | ".join(f"{c} conn: req/s, p50, p99" for c in conns)
    print(f"| server | {head} | RSS |")
    print("|" + " --- |" * (len(conns) + 2))
    for row in report["peers"]:
        if "rows" not in row:
            print(f"| {row['peer']} | {row['skipped']} |")
            continue
        cells = " | ".join(
            f"{r['rate_per_s']:,.0f}, {r['p50_ms']:.2f} ms, {r['p99_ms']:.1f} ms"
            f" (CPU {r['server_cpu_percent_of_one_core']:.0f}%)"
            for r in row["rows"]
        )
        print(f"| {row['peer']} | {cells} | {row['rss_mib']} MiB |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS))
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, help="accsmooth's workers (default: its own)")
    parser.add_argument("--out", type=Path, default=REPO / "loadtests" / "results" / "peers.json")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",")]
    bundle = sorted(p for p in args.models_dir.iterdir() if (p / "manifest.json").exists())[0]
    image = load_images(limit=1, png_every=1)[0].data
    wanted = set(args.peers.split(","))
    report = {
        "command": "python -m loadtests.peers " + " ".join(argv or sys.argv[1:]),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "connections": args.connections,
        "bare_batch_1": wrk.bare_batch1(bundle, 2.0),
        "peers": [measure_accsmooth(bundle, image, args)],
    }
    for peer in PEERS:
        if peer.name in wanted:
            print(f"{peer.name} ...", file=sys.stderr, flush=True)
            report["peers"].append(measure_peer(peer, bundle, image, args))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
