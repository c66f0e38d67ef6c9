"""deploy/k8s: every manifest passes kubernetes-validate (the schemas of KUBERNETES_VERSION,
strict: an unknown field fails) and yamllint; the objects agree with each other and with the
server and its image (ports, probe paths, user, writable folders, shutdown); the
PrometheusRule is the docker/prometheus rule files, verbatim.

    .venv/bin/python -m pytest tests/deploy
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.__main__ import SHUTDOWN_BACKSTOP_SECONDS
from server.http.routes import health
from server.settings import Settings
from tests.deploy.manifests import (
    BASE,
    CRD_KINDS,
    DEPLOY,
    KSERVE,
    KUBECTL,
    KUBERNETES_VERSION,
    OVERLAYS,
    REPO,
    base_objects,
    container,
    env_of,
    kustomize,
    one,
)

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed: the overlays are rendered by kustomize"
)
# Room for the lifespan shutdown (closing sessions and pools) after uvicorn's backstop.
LIFESPAN_SHUTDOWN_MARGIN_S = 5


def validate(obj: dict) -> None:
    """kubernetes-validate, strict; CRD kinds have no schema there (tested field by field)."""
    if obj["kind"] in CRD_KINDS:
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {error.message}")


def deployment() -> dict:
    return one(base_objects(), "Deployment")


def server_container(docs: list[dict] | None = None) -> dict:
    pod = one(docs or base_objects(), "Deployment")["spec"]["template"]["spec"]
    return container(pod, "server")


def test_kubernetes_validate_ships_the_named_versions_schemas():
    # the package holds the schemas: no download at test time
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()


def test_every_base_object_passes_the_kubernetes_schema():
    docs = base_objects()
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        validate(doc)


def test_the_validator_rejects_an_unknown_field():
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_every_kustomization_renders_and_passes_the_kubernetes_schema(folder: Path):
    docs = kustomize(folder)
    assert docs
    for doc in docs:
        validate(doc)


def test_yamllint_passes_on_every_manifest():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-c",
            str(DEPLOY / ".yamllint.yaml"),
            str(DEPLOY),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_probes_use_the_servers_health_routes():
    routes = {route.path for route in health.router.routes}
    spec = server_container()
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert spec["startupProbe"]["httpGet"]["path"] == "/livez"
    assert {"/readyz", "/livez"} <= routes
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["port"] in ports
    assert ports["http"] == int(env_of(spec)["ACCSMOOTH_PORT"])


def test_runs_as_the_images_non_root_user():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", dockerfile).group(1))
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    spec = server_container()
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_read_only_root_with_an_empty_dir_wherever_the_server_writes():
    pod = deployment()["spec"]["template"]["spec"]
    spec = server_container()
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = {m["mountPath"] for m in spec["volumeMounts"] if m["name"] in empty_dirs}
    assert "/tmp" in writable
    metrics_dir = env_of(spec)["PROMETHEUS_MULTIPROC_DIR"]
    assert any(Path(metrics_dir).is_relative_to(path) for path in writable), metrics_dir


def test_grace_period_covers_the_pre_stop_sleep_and_the_servers_bounded_drain():
    pod = deployment()["spec"]["template"]["spec"]
    spec = server_container()
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 5  # endpoint removal has to reach kube-proxy before SIGTERM
    # After SIGTERM the app cancels audits at ACCSMOOTH_GRACEFUL_TIMEOUT_S; uvicorn cancels
    # whatever is left SHUTDOWN_BACKSTOP_SECONDS later; then the lifespan shutdown runs.
    assert "graceful_timeout_s" in Settings.model_fields
    graceful = float(env_of(spec)["ACCSMOOTH_GRACEFUL_TIMEOUT_S"])
    drain = graceful + SHUTDOWN_BACKSTOP_SECONDS + LIFESPAN_SHUTDOWN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain
    # and not so long that a stuck pod holds a rollout or a node drain for minutes
    assert pod["terminationGracePeriodSeconds"] <= pre_stop + drain + 30


def test_one_worker_per_pod_with_onnxruntime_threads_equal_to_the_cpu_limit():
    spec = server_container()
    env = env_of(spec)
    assert env["ACCSMOOTH_WORKERS"] == "1"
    assert int(env["ACCSMOOTH_INTRA_OP_THREADS"]) == int(spec["resources"]["limits"]["cpu"])
    assert spec["resources"]["requests"]["cpu"] and spec["resources"]["requests"]["memory"]


def test_rolling_update_never_drops_below_the_ready_replicas():
    spec = deployment()["spec"]
    assert "replicas" not in spec  # owned by the HorizontalPodAutoscaler
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1


def test_service_hpa_pdb_and_service_monitor_select_the_deployments_pods():
    docs = base_objects()
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    name = one(docs, "Deployment")["metadata"]["name"]
    assert (target["kind"], target["name"]) == ("Deployment", name)
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, one pod always serves
    assert pdb["spec"]["maxUnavailable"] == 1
    monitor = one(docs, "ServiceMonitor")
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    port = service["spec"]["ports"][0]
    assert port["targetPort"] == "http"
    endpoints = monitor["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == [port["name"]]
    assert endpoints[0]["path"] == "/metrics"


def test_service_monitor_has_its_required_fields():
    monitor = one(base_objects(), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert re.fullmatch(r"\d+s", endpoint["interval"])


def test_alert_rules_select_the_job_the_service_monitor_produces():
    # The Prometheus Operator names a ServiceMonitor target's job after its Service.
    docs = base_objects()
    job = one(docs, "Service")["metadata"]["name"]
    rule = one(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    jobs = {m for e in exprs for m in re.findall(r'job="([^"]+)"', e)}
    assert jobs == {job}


def test_prometheus_rule_is_the_docker_rule_files_verbatim():
    sys.path.insert(0, str(DEPLOY / "k8s"))
    try:
        import prometheusrule
    finally:
        sys.path.pop(0)
    assert (BASE / "prometheusrule.yaml").read_text() == prometheusrule.render(), (
        "deploy/k8s/base/prometheusrule.yaml is stale: run `make k8s-rules`"
    )
    rule = one(base_objects(), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = [
        group
        for path in sorted((REPO / "docker" / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == source
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "AccsmoothSurrogateDrifting" in alerts and "AccsmoothDown" in alerts
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert {"alert", "expr"} <= set(r)


@needs_kubectl
def test_gpu_overlay_asks_for_a_gpu_and_the_gpu_image_and_keeps_the_hardening():
    docs = kustomize(next(p for p in OVERLAYS if p.name == "gpu"))
    spec = server_container(docs)
    assert spec["image"] == "accsmooth:gpu"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = env_of(spec)
    assert env["ACCSMOOTH_PROVIDERS"].split(",")[0] == "TensorrtExecutionProvider"
    cache = env["ACCSMOOTH_TRT_ENGINE_CACHE_DIR"]
    assert cache in {m["mountPath"] for m in spec["volumeMounts"]}
    # merged over the base, not replacing it
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert "PROMETHEUS_MULTIPROC_DIR" in env
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"


@needs_kubectl
def test_bundle_volume_overlay_mounts_a_read_only_release_over_the_models_dir():
    docs = kustomize(next(p for p in OVERLAYS if p.name == "bundle-volume"))
    spec = server_container(docs)
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "models")
    assert mount["mountPath"] == env_of(spec)["ACCSMOOTH_MODELS_DIR"]
    assert mount["readOnly"] is True and mount["subPath"].startswith("releases/")


def test_kserve_manifest_is_outside_the_kustomization():
    # applied alone, with KServe installed; tests/deploy/test_kserve.py checks it
    assert KSERVE.exists()
    assert all(doc["kind"] != "InferenceService" for doc in base_objects())
