"""Fixtures for the exporter tests: real CIFAR-10 slices and a smoke-preset bundle.

`cifar_root` is the tiny slice committed under tests/data/cifar10-tiny (10 images per class and
split; always there). `full_cifar_root` is the full JPEG copy in ../shared/datasets/cifar10: a
test that needs it skips with that reason when it is absent, and fails under CI=true.
`smoke_run` runs the whole smoke pipeline once per session on the full copy (from about 15 s on
2 idle cores to 1-2 minutes on loaded ones) and is shared by every test that needs trained
artifacts; those tests are marked `slow` (`make test-slow`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from exporter import pipeline
from exporter.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "cifar10-tiny"
CIFAR = (ROOT / ".." / "shared" / "datasets" / "cifar10").resolve()
SMOKE = ROOT / "exporter" / "configs" / "smoke.toml"


def full_cifar_or_skip() -> Path:
    """The full CIFAR-10 copy; skip (locally) or fail (CI=true) with the reason when absent."""
    if not (CIFAR / "train").is_dir() or not (CIFAR / "test").is_dir():
        reason = (
            f"the full CIFAR-10 copy is not at {CIFAR} (train/ and test/): this test needs more "
            f"images than the tiny slice in {TINY.relative_to(ROOT)}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must provide it")
        pytest.skip(reason)
    return CIFAR


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The committed tiny slice: train/ and test/, 10 images per class (test/ a few more)."""
    return TINY


@pytest.fixture(scope="session")
def full_cifar_root() -> Path:
    return full_cifar_or_skip()


@pytest.fixture(scope="session")
def smoke_config(full_cifar_root):
    return load_config(SMOKE, [f"data.root={full_cifar_root}"])


# Tests that use these fixtures are `slow` wherever they are, marked or not: the fast loop
# (`make test`, `-m "not slow"`) never runs the smoke pipeline or needs the full copy.
SLOW_FIXTURES = frozenset({"smoke_run", "smoke_config", "full_cifar_root"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smoke_run(smoke_config, tmp_path_factory):
    """(config, work folder, bundle folder) after the full smoke pipeline."""
    base = tmp_path_factory.mktemp("smoke")
    work, out = base / "work", base / "models" / "smoke"
    pipeline.run(smoke_config, work, out)
    return smoke_config, work, out


def cifar_slice(cifar_root: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    from exporter.data import read_image_folder

    x, y, _ = read_image_folder(cifar_root / "test", per_class)
    return x, y
