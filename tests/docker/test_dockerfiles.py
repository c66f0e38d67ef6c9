"""The Dockerfiles, checked statically (no Docker engine here): what they copy exists and is in
the build context, the server images install no torch, and the layers are in a cache-friendly
order. What their RUN steps execute is run for real elsewhere: `docker/requirements.py` below,
`docker/healthcheck.py` in test_healthcheck.py, `python -m server` in the integration test.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.docker.dockerfiles import (
    DOCKER,
    REPO,
    arg_defaults,
    copy_sources,
    dockerignore_rules,
    env_values,
    expand,
    ignored,
    instructions,
)

SERVER_IMAGES = ["Dockerfile", "Dockerfile.gpu"]
ALL_IMAGES = [*SERVER_IMAGES, "Dockerfile.exporter"]
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # models/README.md


def steps(name: str):
    return instructions(DOCKER / name)


def index_of(all_steps, keyword: str, needle: str) -> int:
    for i, step in enumerate(all_steps):
        if step.keyword == keyword and needle in step.args:
            return i
    raise AssertionError(f"no {keyword} with {needle!r}")


def requirements_of(*extras: str) -> list[str]:
    """What the images' dependency layer installs: the script's output, run as they run it."""
    result = subprocess.run(
        [sys.executable, "docker/requirements.py", *extras],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_every_copy_source_exists_and_is_in_the_build_context(name):
    rules = dockerignore_rules()
    for source in copy_sources(steps(name)):
        if source.startswith("models/"):
            continue  # the bundle is checked below: it may not be exported yet
        path = REPO / source
        assert path.exists(), f"{name}: COPY {source} does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, f"{name}: COPY {source} copies no Python file"
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not ignored(relative, rules), f"{name}: {relative} is left out by .dockerignore"


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_copy_the_default_bundle(name):
    bundles = [s for s in copy_sources(steps(name)) if s.startswith("models/")]
    assert bundles == ["models/cifar10-sigma0.25/"], bundles
    folder = bundles[0].split("/")[1]
    assert BUNDLE_NAME.fullmatch(folder)
    manifest = REPO / bundles[0] / "manifest.json"
    assert not ignored(manifest.relative_to(REPO).as_posix(), dockerignore_rules())
    if (REPO / bundles[0]).exists():  # exported: then it must be a bundle
        assert manifest.is_file(), f"{bundles[0]} has no manifest.json"


def test_dockerignore_keeps_the_heavy_folders_out():
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        "work/cifar10-sigma0.25/data.npz",
        ".git/HEAD",
        "server/__pycache__/app.cpython-311.pyc",
        "tests/server/http/test_app.py",
    ):
        assert ignored(path, rules), path
    assert not ignored("server/http/app.py", rules)
    assert not ignored("accsmooth/smoothing.py", rules)


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_install_no_torch(name):
    all_steps = steps(name)
    text = " ".join(s.args for s in all_steps if s.keyword in ("RUN", "ARG", "ENV")).lower()
    assert "torch" not in text
    install = all_steps[index_of(all_steps, "RUN", "docker/requirements.py")]
    extras = re.search(r"requirements\.py ([\w ]+?) >", install.args).group(1).split()
    assert "server" in extras
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in requirements_of(*extras)}
    assert not names & {"torch", "torchvision", "onnx", "onnxscript"}, names
    assert {"fastapi", "uvicorn", "prometheus-client"} <= names


def test_gpu_image_installs_onnxruntime_gpu_instead_of_onnxruntime():
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requirements_of("server", "gpu")]
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names


def test_cpu_image_installs_onnxruntime():
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requirements_of("server")]
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_dependencies_are_installed_before_the_code_is_copied(name):
    all_steps = steps(name)
    install = index_of(all_steps, "RUN", "docker/requirements.py")
    assert index_of(all_steps, "COPY", "pyproject.toml") < install
    assert install < index_of(all_steps, "COPY", "accsmooth/")
    between = all_steps[index_of(all_steps, "COPY", "pyproject.toml") : install]
    code = ("accsmooth", "server", "exporter")
    assert all(not any(c in s.args for c in code) for s in between if s.keyword == "COPY")


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_images_run_as_a_non_root_user(name):
    users = [s.args for s in steps(name) if s.keyword == "USER"]
    assert users and users[-1] not in ("root", "0")


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_check_health_on_readyz(name):
    all_steps = steps(name)
    check = [s for s in all_steps if s.keyword == "HEALTHCHECK"]
    assert len(check) == 1
    command = check[0].args.split("CMD", 1)[1].strip()
    assert "docker/healthcheck.py" in command
    script = (REPO / "docker/healthcheck.py").read_text()
    assert "/readyz" in script and "ACCSMOOTH_PORT" in script
    env = env_values(all_steps)
    exposed = [s.args for s in all_steps if s.keyword == "EXPOSE"]
    assert exposed == [env["ACCSMOOTH_PORT"]]
    assert env["ACCSMOOTH_HOST"] == "0.0.0.0"
    assert env["ACCSMOOTH_MODELS_DIR"] == "/app/models"
    cmd = [s for s in all_steps if s.keyword == "CMD"][-1].words()
    assert cmd == ["python", "-m", "server"]


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_give_the_workers_a_metrics_folder_they_own(name):
    all_steps = steps(name)
    folder = env_values(all_steps)["PROMETHEUS_MULTIPROC_DIR"]
    owned = [s.args for s in all_steps if s.keyword == "RUN" and "chown" in s.args]
    assert any(folder in run for run in owned), "the non-root user cannot write the folder"


def test_gpu_image_has_cuda_cudnn_tensorrt_and_an_engine_cache_volume():
    all_steps = steps("Dockerfile.gpu")
    defaults = arg_defaults(all_steps)
    base = expand([s.args for s in all_steps if s.keyword == "FROM"][0], defaults)
    assert base.startswith("nvidia/cuda:") and "cudnn" in base and "runtime" in base
    assert "tensorrt" in defaults["TENSORRT_SPEC"]
    assert defaults["ORT_GPU_SPEC"].startswith("onnxruntime-gpu")
    env = env_values(all_steps)
    cache = env["ACCSMOOTH_TRT_ENGINE_CACHE_DIR"]
    volumes = [v for s in all_steps if s.keyword == "VOLUME" for v in s.words()]
    assert cache in volumes
    assert env["ACCSMOOTH_PROVIDERS"].startswith("TensorrtExecutionProvider")
    assert "tensorrt_libs" in env["LD_LIBRARY_PATH"]
    python = re.search(r"python3\.\d+", env["LD_LIBRARY_PATH"]).group(0)
    assert "ubuntu24.04" in base and python == "python3.12", "library path names the base's Python"


def test_exporter_image_installs_torch_from_a_chosen_index_before_the_extra():
    all_steps = steps("Dockerfile.exporter")
    defaults = arg_defaults(all_steps)
    assert defaults["TORCH_INDEX"].endswith("/cpu")
    torch = index_of(all_steps, "RUN", "TORCH_INDEX")
    assert torch < index_of(all_steps, "RUN", "docker/requirements.py exporter")
    header = (DOCKER / "Dockerfile.exporter").read_text().split("FROM")[0]
    assert "CUDA" in header and "--build-arg TORCH_INDEX=" in header
    copied = copy_sources(all_steps)
    assert "exporter/" in copied and "accsmooth/" in copied  # the exporter imports the core
    assert "server/" not in copied  # and nothing of the server
