"""Fixtures shared by the core and server tests: a tiny real bundle in tmp_path.

No trained weights: `server.placeholder.write_bundle` writes a real (linear) network with known
outputs; the defaults (`tests.server.helpers`) are the bundle `tiny` the server tests describe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from server.placeholder import write_bundle
from tests.server.helpers import CALIBRATION, CLASSES, SHAPE


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Write a bundle into tmp_path/models/<name>; returns its folder."""

    def make(folder_name: str = "tiny", **kwargs) -> Path:
        kwargs.setdefault("classes", CLASSES)
        kwargs.setdefault("shape", SHAPE)
        kwargs.setdefault("calibration", CALIBRATION)
        folder = tmp_path / "models" / folder_name
        write_bundle(folder, **kwargs)
        return folder

    return make
