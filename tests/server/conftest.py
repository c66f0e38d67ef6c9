"""Fixtures for the server tests: tiny real ONNX bundles in tmp_path, images, apps, clients.

Bundles come from `make_bundle` (tests/conftest.py, shared with the core tests):
`server.placeholder.write_bundle` writes a real (linear) network with known outputs. The default
test bundle `tiny` takes [3,8,8] images, has classes (cat, dog, bird), an "intensity" surrogate
(bright -> cat, dark -> dog, mid-grey -> abstain), a probe base model on pixel 0 (class 0 iff
x_0 + noise > 1/2), sigma 0.25 and a calibration shift of 0.02.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from tests.server.helpers import settings_for, wait_ready


@pytest.fixture
def models_dir(make_bundle) -> Path:
    return make_bundle().parent


@pytest.fixture
def start_client() -> Callable[..., TestClient]:
    """Start an app on a models folder with settings overrides; loads before returning."""
    clients: list[TestClient] = []

    def start(models_dir: Path, **overrides) -> TestClient:
        client = TestClient(create_app(settings_for(models_dir, **overrides)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(models_dir: Path, start_client) -> TestClient:
    return start_client(models_dir)
