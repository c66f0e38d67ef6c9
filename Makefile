# accsmooth: `make run` serves models/ on port 8000; `make test` runs lint and the fast tests
# (under a minute), `make test-slow` the tests marked `slow` (the exporter's smoke pipeline, Ray,
# server processes; a few minutes). CI (.ci/run) runs both, then `make test-integration`.
# Everything runs in the virtual environment $(VENV). Teammates add their own targets in
# mk/<topic>.mk (included at the end), so this file stays small.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= auto
MODELS_DIR ?= models
# pytest arguments, e.g. `make test PYTEST_ARGS="-k certify -x"`
PYTEST_ARGS ?=

.PHONY: venv install run placeholder test test-slow lint format

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

venv: $(BIN)/python

# The server extra only: onnxruntime, FastAPI, uvicorn; no torch.
install: venv
	$(BIN)/pip install -e '.[server]'

# Until the exporter lands a trained bundle, generate a clearly named UNTRAINED placeholder.
placeholder: install
	@if ls $(MODELS_DIR)/*/manifest.json >/dev/null 2>&1; then \
		echo "bundles found in $(MODELS_DIR)/: no placeholder needed"; \
	else \
		echo "no bundle in $(MODELS_DIR)/: writing the UNTRAINED placeholder bundle"; \
		$(BIN)/pip install 'onnx>=1.16' && \
		$(BIN)/python -m server.placeholder $(MODELS_DIR)/placeholder-untrained; \
	fi

run: placeholder
	$(BIN)/python -m server --host $(HOST) --port $(PORT) --workers $(WORKERS) \
		--models-dir $(MODELS_DIR)

# torch first, pinned (the CPU wheel here), so that `.[dev]` never pulls another build.
# The fast loop: every test but those marked `integration` (make test-integration) or `slow`.
test: venv
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/ruff check .
	@$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The tests marked `slow` (not `integration`): the exporter's smoke pipeline and what reads it
# (needs the full CIFAR-10 copy in ../shared/datasets/cifar10), Ray, multi-second server runs.
# ops-dev (mk/ops.mk) sets up the environment of `make test` when it is not there yet.
test-slow: ops-dev
	@$(BIN)/python -m pytest -m "slow and not integration" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no slow tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

-include mk/*.mk
