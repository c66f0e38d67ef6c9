"""Print the pip requirements of the project's extras, read from pyproject.toml, one per line.

The images install their dependencies in a layer of their own, before the code is copied, so a
code change does not reinstall onnxruntime: that layer sees only `pyproject.toml` and this
script. The list is the core `dependencies` plus the named extras (self-references such as
`accsmooth[server]` are expanded). When `onnxruntime-gpu` is wanted, plain `onnxruntime` is
dropped: both install the same `onnxruntime` module and must not be mixed.

    python docker/requirements.py server                  # the CPU server image
    python docker/requirements.py server gpu              # the GPU server image
    python docker/requirements.py exporter --no-core      # ... without numpy/scipy
    python docker/requirements.py dev --check             # exit 1 unless all are installed
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (the GPU image's Ubuntu 22.04)
    import tomli as tomllib  # type: ignore[no-redef]

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string (`onnxruntime-gpu>=1.17`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: dict, extras: list[str], core: bool = True) -> list[str]:
    """Requirements of `extras` (plus the core dependencies), expanded, deduplicated, in order."""
    project = pyproject["project"]
    own = _name(project["name"])
    optional = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", [])) if core else []
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise KeyError(f"pyproject.toml has no extra {extra!r}; it has {sorted(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            if _name(req) == own:  # accsmooth[server,exporter]: expand, do not install ourselves
                todo += [e.strip() for e in req.split("[", 1)[1].rstrip("]").split(",")]
            else:
                found.append(req)
    unique = list(dict.fromkeys(found))
    names = {_name(r) for r in unique}
    if "onnxruntime-gpu" in names:
        unique = [r for r in unique if _name(r) != "onnxruntime"]
    return unique


def missing(names: list[str]) -> list[str]:
    """The distributions of `names` that are not installed (versions are not compared)."""
    absent = []
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    return absent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extras", nargs="+", help="extras of pyproject.toml, e.g. server gpu")
    parser.add_argument("--no-core", action="store_true", help="leave out `dependencies`")
    parser.add_argument(
        "--check", action="store_true", help="print nothing; exit 1 if one is not installed"
    )
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    data = tomllib.loads(args.pyproject.read_text())
    found = requirements(data, args.extras, not args.no_core)
    if args.check:
        absent = missing([_name(r) for r in found] + [_name(data["project"]["name"])])
        if absent:
            print(f"not installed: {', '.join(absent)}", file=sys.stderr)
        return 1 if absent else 0
    sys.stdout.write("".join(f"{r}\n" for r in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
