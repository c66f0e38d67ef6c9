"""Fixtures for the exporter tests: real CIFAR-10 slices and a smoke-preset bundle.

The data come from the JPEG copy in ../shared/datasets/cifar10 (tests skip with that reason when
it is absent). `smoke_run` runs the whole smoke pipeline once per session (about 1-2 minutes on
2 CPU cores) and is shared by every test that needs trained artifacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporter import pipeline
from exporter.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CIFAR = (ROOT / ".." / "shared" / "datasets" / "cifar10").resolve()
SMOKE = ROOT / "exporter" / "configs" / "smoke.toml"


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"CIFAR-10 copy not found at {CIFAR}")
    return CIFAR


@pytest.fixture(scope="session")
def smoke_config(cifar_root):
    return load_config(SMOKE, [f"data.root={cifar_root}"])


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
