"""What the exporter's evidence commands (`exporter.compare`, `exporter.ceiling`) do once their
arguments are parsed: compute, print the tables, optionally write them as JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def print_and_save(
    compute: Callable[[], Any],
    render: Callable[[Any], str],
    json_path: Path | None,
    errors: tuple[type[Exception], ...] = (ValueError, OSError),
) -> int:
    """The exit status: 2 with the message on stderr when `compute` raises one of `errors`; else
    0 after printing `render(result)` and writing the result to `json_path` when given."""
    try:
        result = compute()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0
