"""What machine and software a benchmark ran on, for the JSON report next to its numbers.

python -m loadtests.machine        # prints the facts as JSON
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import psutil

PACKAGES = (
    "onnxruntime",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pillow",
    "locust",
    "psutil",
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (a hypervisor may shorten it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "server", "loadtests"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_facts(repo: Path | None = None) -> dict:
    """CPU, cores, memory, OS, load average, versions, code revision, time (UTC)."""
    hypervisor = None
    try:
        flags = Path("/proc/cpuinfo").read_text()
        hypervisor = "hypervisor" in flags
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "virtual_machine": hypervisor,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "git_revision": git_revision(repo) if repo else None,
    }


if __name__ == "__main__":
    print(json.dumps(machine_facts(Path(__file__).resolve().parents[1]), indent=1))
