"""Container health check: exit 0 when the server's /readyz answers 200, 1 otherwise.

The images have no curl; this uses only the standard library, so it costs one short Python
start every interval. The port is the server's own (`ACCSMOOTH_PORT`, default 8000).

    python docker/healthcheck.py                 # what HEALTHCHECK runs inside the container
    python docker/healthcheck.py --url http://127.0.0.1:8123/readyz
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def ready(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, why): healthy only for a 200 from `url` within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as error:  # 503 while bundles load or when one is broken
        return False, f"{url}: {error.code} {error.read(500).decode(errors='replace')}"
    except (OSError, ValueError) as error:  # refused, timed out, bad URL
        return False, f"{url}: {error}"


def main(argv: list[str] | None = None) -> int:
    port = os.environ.get("ACCSMOOTH_PORT", "8000")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/readyz")
    parser.add_argument("--timeout", type=float, default=2.5, help="seconds")
    args = parser.parse_args(argv)
    healthy, why = ready(args.url, args.timeout)
    print(why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
