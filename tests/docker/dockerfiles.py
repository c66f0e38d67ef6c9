"""Read Dockerfiles and .dockerignore the way `docker build` does, closely enough to test them.

There is no Docker engine on the development machines, so the tests check the files
statically: `instructions()` joins continuation lines and drops comments, `expand()`
substitutes `${ARG}` defaults, and `ignored()` applies .dockerignore's rules (Go-style globs,
`**`, `!` exceptions, the last matching line wins, a match on a folder covers its content).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the (joined) line

    def words(self) -> list[str]:
        """Arguments as a list: the JSON (exec) form or shell-like words."""
        text = self.args.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return shlex.split(text)


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def arg_defaults(steps: list[Instruction]) -> dict[str, str]:
    """`ARG NAME=default` values (the last one wins, as in a single-stage build)."""
    defaults = {}
    for step in steps:
        if step.keyword == "ARG" and "=" in step.args:
            name, _, value = step.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(text: str, values: dict[str, str]) -> str:
    """Substitute `${NAME}` and `$NAME` from `values` (unknown names are left as they are)."""

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def copy_sources(steps: list[Instruction]) -> list[str]:
    """Context paths of every COPY/ADD without --from (ARG defaults substituted)."""
    values = arg_defaults(steps)
    sources = []
    for step in steps:
        if step.keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in step.words() if not w.startswith("--")]
        if any(w.startswith("--from") for w in step.words()):
            continue
        sources += [expand(w, values) for w in words[:-1]]
    return sources


def env_values(steps: list[Instruction]) -> dict[str, str]:
    """ENV NAME=value pairs, in order (the `ENV a=1 b=2` form)."""
    values = arg_defaults(steps)
    env = {}
    for step in steps:
        if step.keyword == "ENV":
            for word in shlex.split(step.args):
                name, _, value = word.partition("=")
                env[name] = expand(value, values | env)
    return env


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore glob as a regex over slash-separated relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path = REPO / ".dockerignore") -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line of .dockerignore, in order."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/") if pattern not in ("/", "") else pattern
        rules.append((negate, _glob_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether the context path `relative` (a file) is left out of the build context."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded
