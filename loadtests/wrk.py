"""`wrk` (Debian's C HTTP load generator) against a server, and the bare model in the same run.

    python -m loadtests.wrk                          # HEAD's server on models/, 1/16/64 conns
    python -m loadtests.wrk --code-dir /tmp/old --label before --env ACCSMOOTH_INTRA_OP_THREADS=1
    python -m loadtests.wrk --oip              # also the Open Inference Protocol's infer

One POST per request on keep-alive connections, closed loop, one wrk thread: `--connections`
clients each send the same 32x32 CIFAR-10 PNG as a raw body (`image/png`) back to back. Each
point reports the rate, p50/p99 from wrk's latency histogram, non-2xx answers and socket
errors, and the server's CPU (psutil, process and children). Bare onnxruntime at batch 1
(`loadtests.bare`, the server's own session options) is measured in the same run, before the
server starts, so that ratios hold on a shared machine. wrk is installed with apt-get when
missing. Prints one JSON report; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accsmooth.bundle import read_manifest
from loadtests.images import load_images
from loadtests.serve import REPO, ServerProcess, server_settings, single_bundle_dir

# wrk calls done() once at the end: print the figures as one JSON line (latency in us).
SCRIPT = """
wrk.method = "POST"
for line in string.gmatch(os.getenv("WRK_HEADERS"), "[^\\n]+") do
  local key, value = string.match(line, "^([^:]+):%s*(.*)$")
  wrk.headers[key] = value
end
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d,'
    .. ' "max_us": %d, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package (as root) when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    for command in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"]):
        subprocess.run(command, check=False, capture_output=True)
        if command[1] == "update":
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    return found


def run_wrk(url: str, body: Path, connections: int, seconds: float, headers: dict | None = None):
    """One closed-loop wrk run of POSTs of `body` (default header: a PNG); its figures (rate/s,
    latency in ms)."""
    headers = headers or {"Content-Type": "image/png"}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(SCRIPT)
    lines = "\n".join(f"{k}: {v}" for k, v in headers.items())
    env = os.environ | {"WRK_BODY": str(body), "WRK_HEADERS": lines}
    command = [
        ensure_wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
        url,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    os.unlink(script.name)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    return {
        "connections": connections,
        "rate_per_s": round(raw["requests"] * 1e6 / raw["duration_us"], 1),
        "p50_ms": raw["p50_us"] / 1000.0,
        "p90_ms": raw["p90_us"] / 1000.0,
        "p99_ms": raw["p99_us"] / 1000.0,
        "max_ms": raw["max_us"] / 1000.0,
        "requests": raw["requests"],
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
    }


def oip_request(image: bytes) -> tuple[bytes, dict]:
    """An Open Inference Protocol infer request for one image with the binary-data extension
    (what tritonclient sends by default), and its headers."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = head + len(image).to_bytes(4, "little") + image
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return body, headers


def measure(
    server: ServerProcess, path: str, body: Path, connections, seconds, warmup, headers=None
) -> list:
    """wrk at each connection count (after a warm-up), with the server's CPU over each run."""
    rows = []
    for c in connections:
        run_wrk(server.url + path, body, c, warmup, headers)
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        row = run_wrk(server.url + path, body, c, seconds, headers)
        wall = time.perf_counter() - t0
        row["server_cpu_percent_of_one_core"] = round(
            100.0 * (server.cpu_seconds() - cpu0) / wall, 1
        )
        print(
            f"  {path} {c} conn: {row['rate_per_s']:.0f}/s p50 {row['p50_ms']:.3f} ms"
            f" p99 {row['p99_ms']:.2f} ms non-2xx {row['non_2xx']}",
            file=sys.stderr,
        )
        rows.append(row)
    return rows


def wrk_section(server, model: str, image: bytes, connections, seconds, warmup, bare_rate):
    """`make bench`'s wrk figures: raw-body /certify and the OIP infer of the same image."""
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        png, oip = Path(folder) / "image.png", Path(folder) / "infer.bin"
        png.write_bytes(image)
        body, headers = oip_request(image)
        oip.write_bytes(body)
        out["certify"] = measure(server, "/certify", png, connections, seconds, warmup)
        out["oip_infer"] = measure(
            server, f"/v2/models/{model}/infer", oip, connections, seconds, warmup, headers
        )
    for row in out["certify"] + out["oip_infer"]:
        row["fraction_of_bare_batch_1"] = round(row["rate_per_s"] / bare_rate, 3)
    return out


def bare_batch1(bundle: Path, seconds: float) -> dict:
    """Bare onnxruntime, the surrogate at batch 1, with the server's fast-path options."""
    from loadtests import bare

    options = bare.runtime_options(server_settings()["fast_runtime"])
    return bare.surrogate_rates(bundle, options, seconds, batches=(1,))["batch_1"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--model", help="bundle folder name (default: the first)")
    parser.add_argument("--code-dir", type=Path, default=REPO, help="the server code to run")
    parser.add_argument("--label", default="HEAD")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--path", default="/certify")
    parser.add_argument("--workers", type=int, help="default: the server's own default")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--oip", action="store_true", help="also POST /v2/models/{name}/infer")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    folders = sorted(p for p in args.models_dir.iterdir() if (p / "manifest.json").exists())
    bundle = args.models_dir / args.model if args.model else folders[0]
    env = dict(item.split("=", 1) for item in args.env)
    image = load_images(limit=1, png_every=1)[0]
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
        f.write(image.data)
    report = {
        "command": "python -m loadtests.wrk " + " ".join(argv or sys.argv[1:]),
        "label": args.label,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "image": {"name": image.name, "bytes": len(image.data)},
        "bare_batch_1": bare_batch1(bundle, 2.0),
        "server_env": env,
        "workers": args.workers,
    }
    models = single_bundle_dir(bundle)
    log = f"/tmp/accsmooth-wrk-{os.getpid()}.log"
    server = ServerProcess(
        models, env=env, workers=args.workers, log_path=log, code_dir=args.code_dir
    )
    with server:
        report["server_rss_mib"] = round(server.rss_mb(), 1)
        connections = [int(c) for c in args.connections.split(",")]
        report["rows"] = measure(
            server, args.path, Path(f.name), connections, args.seconds, args.warmup
        )
        if args.oip:
            body, headers = oip_request(image.data)
            oip = Path(f.name + ".oip")
            oip.write_bytes(body)
            path = f"/v2/models/{read_manifest(bundle).name}/infer"
            report["oip_rows"] = measure(
                server, path, oip, connections, args.seconds, args.warmup, headers
            )
            oip.unlink()
    bare_rate = report["bare_batch_1"]["images_per_s"]
    for row in report["rows"] + report.get("oip_rows", []):
        row["fraction_of_bare_batch_1"] = round(row["rate_per_s"] / bare_rate, 3)
    shutil.rmtree(models, ignore_errors=True)
    os.unlink(f.name)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
