# Operations (issue 5): schema fuzzing, the Prometheus/Docker integration test, ops checks.
#   make fuzz                  schemathesis against a live server (placeholder bundle), 3 passes
#   make test-integration      tests marked `integration` (real Prometheus, ...; see tests/docker)
#   make ops-check             promtool on docker/prometheus, dashboard JSON up to date
#   make dashboard             regenerate docker/grafana/dashboards/accsmooth.json
# On a shared machine: make fuzz NICE="nice -n 15". Fuzz size: FUZZ_EXAMPLES (per operation).

NICE ?=
FUZZ_EXAMPLES ?= 15
FUZZ_SEED ?= 20261124
FUZZ_ARGS ?=

.PHONY: ops-dev fuzz test-integration ops-check dashboard

# The environment of `make test` (CPU torch first, then the dev extras), without the run;
# skipped when it is there already (CI runs `make test` just before), saving a rebuild.
ops-dev: venv
	@$(BIN)/python docker/requirements.py dev --check \
	|| { $(BIN)/pip install torch==2.13.0 && $(BIN)/pip install -e '.[dev]'; }

fuzz: ops-dev
	$(NICE) $(BIN)/python -m tests.fuzz --examples $(FUZZ_EXAMPLES) --seed $(FUZZ_SEED) $(FUZZ_ARGS)

test-integration: ops-dev
	@if ! command -v prometheus >/dev/null; then \
		echo "test-integration: no prometheus binary (Debian: apt-get install -y prometheus);" \
		     "its tests will be skipped"; fi
	$(NICE) $(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

ops-check: venv
	promtool check config docker/prometheus/prometheus.yml
	promtool test rules docker/prometheus/tests/*.yml
	$(BIN)/python docker/grafana/dashboard.py
	git diff --exit-code -- docker/grafana/dashboards/

dashboard: venv
	$(BIN)/python docker/grafana/dashboard.py
