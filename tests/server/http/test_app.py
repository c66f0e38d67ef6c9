"""The app factory: nothing at import time, no torch, OpenAPI docs, one error shape everywhere."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_never_imports_torch(models_dir):
    code = (
        "import sys; from server.http.app import create_app; from server.settings import Settings;"
        "import server.__main__, server.http.routes.certify;"
        f"create_app(Settings(models_dir={str(models_dir)!r}));"
        "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_the_app_module_builds_nothing():
    import server.http.app

    assert not hasattr(server.http.app, "app")  # only the factories: create_app, app_from_env


def test_openapi_documents_both_ways_to_send_an_image(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/certify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(body)
    assert "n0" in {p["name"] for p in schema["paths"]["/certify/sampled"]["post"]["parameters"]}
    assert client.get("/docs").status_code == 200


def test_unknown_routes_and_methods_answer_in_the_error_shape(client):
    assert client.get("/nowhere").json() == {"error": "not_found", "detail": "Not Found"}
    response = client.get("/certify")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
