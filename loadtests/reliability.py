"""Reliability figures: slow clients, resize bombs, disconnects and SIGTERM, against a real server.

    python -m loadtests.reliability          # about 3 minutes; results/reliability.json
    python -m loadtests.reliability --quick  # shorter phases, fewer disconnects

Each phase starts its own `python -m server` (one worker, default settings unless said) on a
free loopback port (127.0.0.1 only) with a 3x32x32 placeholder bundle, and drives it from
threads of this process; every count and duration is bounded:

1. slow bodies: 300 connections send a /certify body at 1 byte every 2 s while one normal
   client sends /certify back to back: its share of 200 answers and its latency;
2. resize bombs: two clients send /certify/batch?resize=true of 32 images that decode to
   4096 x 4096 (706-byte lossless WebP, then RLE BMP) while /livez is polled every 10 ms;
3. disconnects: 1,000 requests whose client hangs up (mid-headers, mid-upload, before the
   answer, during an audit); the server's own /metrics must show no 5xx;
   then neighbours: a normal /certify client's rate alone, beside 2 clients looping single
   resize bombs, and beside 20 mode=hybrid clients (the default bundle, CIFAR-10 images);
4. SIGTERM with 5 queued audits of n = 100,000 and 8 fast-path clients: every fast-path request
   sent before the signal answered, the audits answered (200 or 503), the exit within the grace
   period (ACCSMOOTH_GRACEFUL_TIMEOUT_S, 10 s by default).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from loadtests.images import load_images
from loadtests.machine import machine_facts
from loadtests.serve import REPO, ServerProcess, single_bundle_dir

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"


# --- plumbing ----------------------------------------------------------------------------------
def models_dir() -> Path:
    """A temporary models folder with the CIFAR-sized placeholder bundle."""
    folder = Path(tempfile.mkdtemp(prefix="accsmooth-reliability-")) / "models"
    subprocess.run(
        [sys.executable, "-m", "server.placeholder", str(folder / "placeholder")],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return folder


def png(side: int = 32, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def bomb(fmt: str, side: int = 4096) -> bytes:
    """A small file that decodes to side x side (4096: the default pixel limit): a lossless
    WebP of one colour, or an 8-bit RLE BMP of rows of 255-pixel runs (Pillow writes no RLE)."""
    if fmt == "WEBP":
        buffer = io.BytesIO()
        Image.new("RGB", (side, side), (9, 9, 9)).save(buffer, "WEBP", lossless=True)
        return buffer.getvalue()
    runs, left = b"", side
    while left:
        runs, left = runs + bytes([min(255, left), 9]), left - min(255, left)
    pixels = (runs + b"\x00\x00") * side + b"\x00\x01"  # end of line per row, end of bitmap
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + info + palette + pixels


def multipart(images: list[bytes], boundary: str = "rel1ability") -> tuple[bytes, str]:
    body = b"".join(
        f'--{boundary}\r\ncontent-disposition: form-data; name="image"; filename="{i}"\r\n'
        f"content-type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def metrics_text(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def statuses(port: int) -> dict[str, float]:
    """accsmooth_http_requests_total summed by status code, leaving out /readyz (503 while the
    bundles load: the polls of ServerProcess waiting for the server, not the run's requests)."""
    out: dict[str, float] = {}
    for match in re.finditer(
        r"^accsmooth_http_requests_total\{([^}]*)\} ([0-9.e+]+)$", metrics_text(port), re.M
    ):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("endpoint") != "/readyz":
            out[labels["status"]] = out.get(labels["status"], 0) + float(match.group(2))
    return out


def gauge(port: int, name: str) -> float:
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", metrics_text(port), re.M)
    return float(match.group(1)) if match else 0.0


class Poller(threading.Thread):
    """Sends one request again and again on a keep-alive connection until stopped; records
    (status, seconds) per answer (status None: the connection failed)."""

    def __init__(self, port, method, path, body=b"", ctype="image/png", pause=0.0):
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.body = port, method, path, body
        self.ctype, self.pause = ctype, pause
        self.stop = threading.Event()
        self.records: list[tuple[int | None, float, float]] = []  # (status, seconds, sent_at)

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            started = time.perf_counter()
            try:
                headers = {"content-type": self.ctype} if self.body else {}
                conn.request(self.method, self.path, self.body or None, headers)
                sent = time.monotonic()
                response = conn.getresponse()
                response.read()
                self.records.append((response.status, time.perf_counter() - started, sent))
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                self.records.append((None, time.perf_counter() - started, time.monotonic()))
                conn = None
                time.sleep(0.01)
            if self.pause:
                time.sleep(self.pause)


def summary(records: list[tuple], ok: int = 200) -> dict:
    seconds = [s * 1000 for status, s, _ in records if status == ok]
    return {
        "requests": len(records),
        "ok": len(seconds),
        "ok_share": len(seconds) / len(records) if records else None,
        "statuses": {str(k): sum(r[0] == k for r in records) for k in {r[0] for r in records}},
        "p50_ms": percentile(seconds, 50),
        "p95_ms": percentile(seconds, 95),
        "max_ms": max(seconds) if seconds else None,
    }


# --- the phases ----------------------------------------------------------------------------------
def slow_bodies(models: Path, connections: int, seconds: float) -> dict:
    image = png()
    with ServerProcess(models) as server:
        sockets = []
        head = (
            "POST /certify HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: image/png\r\n"
            f"content-length: {len(image)}\r\n\r\n"
        ).encode()
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(head)
            sockets.append(sock)
        client = Poller(server.port, "POST", "/certify", image)
        client.start()
        started, sent, dropped = time.monotonic(), 0, 0
        while time.monotonic() - started < seconds:  # one byte every 2 s on each connection
            for sock in sockets:
                try:
                    sock.sendall(image[sent : sent + 1])
                except OSError:
                    dropped += 1
            sent += 1
            time.sleep(2.0)
        client.stop.set()
        client.join(30)
        for sock in sockets:
            sock.close()
        return {
            "slow_connections": connections,
            "trickle": "1 byte every 2 s",
            "seconds": seconds,
            "slow_sends_failed": dropped,
            "normal_client": summary(client.records),
        }


def resize_bombs(models: Path, seconds: float) -> dict:
    out = {}
    for fmt in ("WEBP", "BMP"):
        data = bomb(fmt)
        body, ctype = multipart([data] * 32)
        with ServerProcess(models) as server:
            livez = Poller(server.port, "GET", "/livez", pause=0.01)
            bombers = [
                Poller(server.port, "POST", "/certify/batch?resize=true", body, ctype)
                for _ in range(2)
            ]
            livez.start()
            time.sleep(1.0)
            quiet = list(livez.records)
            for thread in bombers:
                thread.start()
            time.sleep(seconds)
            for thread in (*bombers, livez):
                thread.stop.set()
            for thread in (*bombers, livez):
                thread.join(120)
            during = livez.records[len(quiet) :]
            out[fmt.lower()] = {
                "file_bytes": len(data),
                "decodes_to": "4096x4096",
                "images_per_batch": 32,
                "batches": summary([r for b in bombers for r in b.records]),
                "livez_quiet": summary(quiet),
                "livez_during_bombs": summary(during),
            }
    return out


def _hang_up(port: int, kind: str, image: bytes, batch: tuple[bytes, str]) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if kind == "mid-headers":
            sock.sendall(b"POST /certify HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-")
        elif kind == "mid-upload":
            sock.sendall(
                b"POST /certify HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
                + f"content-length: {len(image)}\r\n\r\n".encode()
                + image[: len(image) // 2]
            )
        elif kind == "mid-upload-batch":
            body, ctype = batch
            sock.sendall(
                f"POST /certify/batch HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
        elif kind == "before-answer":
            sock.sendall(
                b"POST /certify HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
                + f"content-length: {len(image)}\r\n\r\n".encode()
                + image
            )
        elif kind == "during-audit":
            sock.sendall(
                b"POST /certify/sampled?n=100000 HTTP/1.1\r\nhost: x\r\n"
                b"content-type: image/png\r\n"
                + f"content-length: {len(image)}\r\n\r\n".encode()
                + image
            )
            time.sleep(0.05)
    finally:
        sock.close()  # FIN: the server sees the client go
        time.sleep(0.002)


def disconnects(models: Path, count: int) -> dict:
    kinds = ["mid-headers", "mid-upload", "mid-upload-batch", "before-answer", "during-audit"]
    image, batch = png(), multipart([png(seed=i) for i in range(8)])
    with ServerProcess(models, env={"ACCSMOOTH_LOG_LEVEL": "info"}) as server:
        started = time.monotonic()
        for i in range(count):
            _hang_up(server.port, kinds[i % len(kinds)], image, batch)
        seconds = time.monotonic() - started
        deadline = time.monotonic() + 60  # audits of gone clients must stop
        while time.monotonic() < deadline and (
            gauge(server.port, "accsmooth_sampled_running")
            + gauge(server.port, "accsmooth_sampled_queue_depth")
        ):
            time.sleep(0.2)
        audits_left = gauge(server.port, "accsmooth_sampled_running")
        by_status = statuses(server.port)
        log = server.log_path.read_text(errors="replace")
    fives = sum(v for k, v in by_status.items() if k.startswith("5"))
    return {
        "disconnects": count,
        "kinds": kinds,
        "seconds": seconds,
        "server_statuses": by_status,
        "false_5xx": fives,
        "audits_running_after": audits_left,
        "tracebacks_in_log": log.count("Traceback"),
        "5xx_log_lines": [line for line in log.splitlines() if re.search(r"-> 5\d\d", line)],
    }


def neighbours(models: Path, seconds: float) -> dict:
    """A normal /certify client's rate alone, beside 2 clients looping single resize bombs, and
    beside 20 mode=hybrid clients (on the default bundle: some images fall back to Monte-Carlo)
    compared with 20 plain /certify clients (the same load without the fallbacks)."""
    images = [i.data for i in load_images(limit=20, png_every=1)]
    bombs = bomb("WEBP")
    out = {}
    with ServerProcess(models) as server:
        loads = {
            "alone": [],
            "2_resize_bomb_clients": [
                Poller(server.port, "POST", "/certify?resize=true", bombs, "image/webp")
                for _ in range(2)
            ],
            "20_surrogate_clients": [
                Poller(server.port, "POST", "/certify", images[i % len(images)]) for i in range(20)
            ],
            "20_hybrid_clients": [
                Poller(server.port, "POST", "/certify?mode=hybrid", images[i % len(images)])
                for i in range(20)
            ],
        }
        for name, others in loads.items():
            for thread in others:
                thread.start()
            time.sleep(1.0)
            client = Poller(server.port, "POST", "/certify", images[0])
            client.start()
            time.sleep(seconds)
            for thread in (client, *others):
                thread.stop.set()
            for thread in (client, *others):
                thread.join(60)
            out[name] = summary(client.records) | {"rate_per_s": len(client.records) / seconds}
            if others:
                out[name]["others"] = summary([r for t in others for r in t.records])
    return out


def sigterm(models: Path, audits: int = 5, clients: int = 8) -> dict:
    image = png()
    with ServerProcess(models) as server:
        grace = 10.0  # ACCSMOOTH_GRACEFUL_TIMEOUT_S's default
        audit = [
            Poller(server.port, "POST", "/certify/sampled?n=100000&seed=1", image)
            for _ in range(audits)
        ]
        fast = [Poller(server.port, "POST", "/certify", image) for _ in range(clients)]
        for thread in audit:
            thread.start()
            time.sleep(0.05)
        for thread in fast:
            thread.start()
        deadline = time.monotonic() + 60
        while gauge(server.port, "accsmooth_sampled_queue_depth") < audits - 1:
            assert time.monotonic() < deadline, "the audits never queued"
            time.sleep(0.1)
        time.sleep(1.0)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = server.process.wait(120)
        exit_seconds = time.monotonic() - signalled
        for thread in (*audit, *fast):
            thread.stop.set()
            thread.join(60)
    sent_before = [r for t in fast for r in t.records if r[2] < signalled]
    audit_answers = [t.records[0][0] if t.records else None for t in audit]
    return {
        "grace_s": grace,
        "queued_audits": audits,
        "audit_n": 100_000,
        "fast_clients": clients,
        "exit_code": code,
        "exit_seconds_after_sigterm": exit_seconds,
        "fast_path_sent_before_sigterm": len(sent_before),
        "fast_path_lost": sum(r[0] != 200 for r in sent_before),
        "audit_answers": audit_answers,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (a functional run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--bundle",
        type=Path,
        default=REPO / "models" / "cifar10-sigma0.25",
        help="trained bundle for the neighbours phase (hybrid needs boundary images)",
    )
    args = parser.parse_args(argv)
    models = models_dir()
    default_bundle = single_bundle_dir(args.bundle)
    seconds = 8.0 if args.quick else 30.0
    report = {"machine": machine_facts(REPO), "command": "python -m loadtests.reliability"}
    phases = (
        ("slow_bodies", lambda: slow_bodies(models, 300, seconds)),
        ("resize_bombs", lambda: resize_bombs(models, seconds / 3)),
        ("disconnects", lambda: disconnects(models, 200 if args.quick else 1000)),
        ("neighbours", lambda: neighbours(default_bundle, seconds / 3)),
        ("sigterm", lambda: sigterm(models)),
    )
    for name, run in phases:
        started = time.monotonic()
        report[name] = run()
        print(f"{name} ({time.monotonic() - started:.0f} s): {json.dumps(report[name])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
