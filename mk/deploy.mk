# Kubernetes manifests (deploy/, docs/deploy-kubernetes.md).
#   make k8s-rules     regenerate deploy/k8s/base/prometheusrule.yaml from docker/prometheus/rules
#   make k8s-check     yamllint, kubernetes-validate and the rolling-update test (tests/deploy)
# `make test` runs the static checks; `make test-integration` the rolling update behind HAProxy.

.PHONY: k8s-rules k8s-check

k8s-rules: venv
	$(BIN)/python deploy/k8s/prometheusrule.py

k8s-check: ops-dev
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)
