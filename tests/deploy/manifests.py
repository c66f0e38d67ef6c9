"""Read the Kubernetes manifests of deploy/ for the tests: every object of a file, the output of
`kubectl kustomize` for an overlay, and one object by kind.

    docs = objects(K8S / "base" / "deployment.yaml")
    rendered = kustomize(K8S / "overlays" / "gpu")     # None without kubectl
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
KSERVE = DEPLOY / "kserve" / "inferenceservice.yaml"
# The schemas manifests are validated against (kubernetes-validate ships them, offline).
KUBERNETES_VERSION = "1.32.0"
# Kinds defined by CRDs, for which kubernetes-validate has no schema: checked field by field.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService"}
KUBECTL = shutil.which("kubectl")


def objects(path: Path) -> list[dict]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_objects() -> list[dict]:
    """The objects the base kustomization lists, in its order."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [obj for name in kustomization["resources"] for obj in objects(BASE / name)]


def kustomize(folder: Path) -> list[dict] | None:
    """`kubectl kustomize folder` as objects; None when kubectl is not installed."""
    if KUBECTL is None:
        return None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict], kind: str) -> dict:
    """The only object of `kind` among docs."""
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def env_of(container_spec: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_spec.get("env", [])}
