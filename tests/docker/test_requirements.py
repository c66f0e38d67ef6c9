"""docker/requirements.py: the dependency list the images install, read from pyproject.toml."""

from __future__ import annotations

import importlib.util

import pytest

from tests.docker.dockerfiles import DOCKER

spec = importlib.util.spec_from_file_location("requirements", DOCKER / "requirements.py")
requirements_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(requirements_module)
requirements = requirements_module.requirements

PYPROJECT = {
    "project": {
        "name": "accsmooth",
        "dependencies": ["numpy>=1.24"],
        "optional-dependencies": {
            "server": ["fastapi>=0.110", "onnxruntime>=1.17"],
            "exporter": ["torch>=2.2", "onnxruntime>=1.17"],
            "gpu": ["onnxruntime-gpu>=1.17"],
            "dev": ["accsmooth[server,exporter]", "pytest>=8"],
        },
    }
}


def test_requirements_are_the_core_plus_the_extra():
    got = requirements(PYPROJECT, ["server"])
    assert got == ["numpy>=1.24", "fastapi>=0.110", "onnxruntime>=1.17"]


def test_requirements_without_core():
    assert requirements(PYPROJECT, ["gpu"], core=False) == ["onnxruntime-gpu>=1.17"]


def test_self_references_are_expanded_and_duplicates_dropped():
    got = requirements(PYPROJECT, ["dev"])
    assert got == ["numpy>=1.24", "pytest>=8", "fastapi>=0.110", "onnxruntime>=1.17", "torch>=2.2"]
    assert not any(r.startswith("accsmooth") for r in got)


def test_onnxruntime_gpu_replaces_onnxruntime():
    assert requirements(PYPROJECT, ["server", "gpu"]) == [
        "numpy>=1.24",
        "fastapi>=0.110",
        "onnxruntime-gpu>=1.17",
    ]


def test_an_unknown_extra_is_an_error():
    with pytest.raises(KeyError, match="no extra 'serve'"):
        requirements(PYPROJECT, ["serve"])


def test_check_passes_in_this_environment_and_names_what_is_missing(tmp_path, capsys):
    main = requirements_module.main
    assert main(["server", "--check"]) == 0  # the dev environment has the server extra
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "accsmooth"\ndependencies = []\n'
        '[project.optional-dependencies]\nx = ["no-such-package-here>=1"]\n'
    )
    assert main(["x", "--check", "--pyproject", str(pyproject)]) == 1
    assert "no-such-package-here" in capsys.readouterr().err
