"""deploy/kserve/inferenceservice.yaml: no CRD schema of KServe is available offline, so its
required fields are checked here, and the Kubernetes part of the predictor (KServe embeds a
PodSpec) is validated against the Kubernetes schema by wrapping it in a Pod.

    .venv/bin/python -m pytest tests/deploy/test_kserve.py
"""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from server.http.routes import health
from tests.deploy.manifests import (
    KSERVE,
    KUBERNETES_VERSION,
    base_objects,
    container,
    env_of,
    objects,
    one,
)

# Fields KServe's predictor adds to a PodSpec (ComponentExtensionSpec) that this manifest uses;
# every other key of `predictor` must be a PodSpec field.
EXTENSION_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
# A custom predictor's container; KServe reads its protocol from the PROTOCOL variable.
KSERVE_CONTAINER = "kserve-container"


def service() -> dict:
    return one(objects(KSERVE), "InferenceService")


def predictor() -> dict:
    return service()["spec"]["predictor"]


def predictor_container() -> dict:
    return container(predictor(), KSERVE_CONTAINER)


def test_inference_service_has_its_required_fields():
    isvc = service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    # KServe derives Service and host names from it: a DNS-1035 label, short enough
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    assert len(isvc["metadata"]["name"]) <= 45
    assert set(isvc["spec"]) == {"predictor"}
    spec = predictor()
    # a custom predictor: containers, and none of the built-in model runtimes
    assert "model" not in spec and spec["containers"]
    assert spec["containers"][0]["name"] == KSERVE_CONTAINER
    assert spec["containers"][0]["image"]
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert spec["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode in {"Serverless", "RawDeployment"}


def test_predictor_speaks_the_open_inference_protocol_v2():
    assert env_of(predictor_container())["PROTOCOL"] == "v2"


def test_predictor_pod_spec_passes_the_kubernetes_schema():
    spec = predictor()
    pod_spec = {k: v for k, v in spec.items() if k not in EXTENSION_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"predictor at {'.'.join(map(str, error.path))}: {error.message}")


def test_probes_are_the_servers_open_inference_protocol_health_routes():
    routes = {route.path for route in health.router.routes}
    spec = predictor_container()
    port = spec["ports"][0]["containerPort"]
    assert len(spec["ports"]) == 1  # Knative allows one
    assert port == int(env_of(spec)["ACCSMOOTH_PORT"])
    assert spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in ("livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["path"] in routes
        assert spec[probe]["httpGet"]["port"] == port


def test_predictor_runs_the_server_as_the_deployment_does():
    pod = one(base_objects(), "Deployment")["spec"]["template"]["spec"]
    server = container(pod, "server")
    spec = predictor_container()
    assert {k: v for k, v in env_of(spec).items() if k != "PROTOCOL"} == env_of(server)
    for key in ("resources", "securityContext", "lifecycle", "volumeMounts", "image"):
        assert spec[key] == server[key], key
    for key in ("securityContext", "volumes", "terminationGracePeriodSeconds"):
        assert predictor()[key] == pod[key], key
