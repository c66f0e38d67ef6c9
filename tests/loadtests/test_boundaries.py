"""The load tests stand outside the server: they import the core (`accsmooth`) or talk to a
server process (HTTP, `python -m server...`), never import the `server` package, so what they
measure is the server as deployed and its code can change without them."""

from __future__ import annotations

import ast
from pathlib import Path

from loadtests import bare
from loadtests.serve import REPO, server_settings
from server.settings import Settings


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_no_load_test_module_imports_the_server_package():
    folder = REPO / "loadtests"
    sources = [  # hidden folders hold the peers' virtual environments
        path
        for path in folder.rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    assert len(sources) > 10
    found = {
        str(path.relative_to(REPO)): module
        for path in sources
        for module in imported_modules(path)
        if module == "server" or module.startswith("server.")
    }
    assert found == {}


def test_the_session_options_are_the_ones_a_server_builds_in_this_environment(monkeypatch):
    env = {
        "ACCSMOOTH_PROVIDERS": "CPUExecutionProvider",
        "ACCSMOOTH_INTRA_OP_THREADS": "3",
        "ACCSMOOTH_SAMPLED_THREADS": "2",
    }
    described = server_settings(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert bare.runtime_options(described["fast_runtime"]) == settings.fast_runtime()
    assert bare.runtime_options(described["sampled_runtime"]) == settings.sampled_runtime()
    assert described["settings"]["sampled_batch_size"] == settings.sampled_batch_size
