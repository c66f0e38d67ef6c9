# Load tests, benchmarks and reliability runs (issue #5); results go to loadtests/results/.
#   make bench       one benchmark run: table on stdout, loadtests/results/bench.json
#   make loadtest    locust, headless, against a server it starts; fails past the thresholds
#   make soak        10 minutes of locust at ~70% of the measured capacity
#   make overload    open-loop /certify at 4x capacity, then normal load: sheds, recovers
#   make bench-peers the same certificate served by LitServe, KServe, ... beside accsmooth (wrk)
# Each starts its own `python -m server` on a free port (never 8000), serving LOAD_MODELS_DIR.
# Thresholds and rates come from a measured run on the 2-core reference machine: see
# loadtests/README.md before changing them.

LOAD_MODELS_DIR ?= $(MODELS_DIR)
LOAD_USERS ?= 20
# requests/s per fast-path user: 19 users x 10/s = 190/s, a quarter of the capacity here
LOAD_USER_RATE ?= 10
LOAD_TIME ?= 60s
LOAD_MAX_FAIL_RATIO ?= 0.001
LOAD_MAX_P95_MS ?= 50
SOAK_USERS ?= 32
SOAK_FRACTION ?= 0.7
SOAK_TIME ?= 10m
SOAK_MAX_P95_MS ?= 100
OVERLOAD_FACTOR ?= 4
BENCH_ARGS ?=

.PHONY: loadtest-install loadtest bench bench-peers soak overload

$(BIN)/locust: | venv
	$(BIN)/pip install -e '.[server,loadtest]'

loadtest-install: $(BIN)/locust

loadtest: $(BIN)/locust
	$(BIN)/python -m loadtests.run_locust --models-dir $(LOAD_MODELS_DIR) \
		--users $(LOAD_USERS) --user-rate $(LOAD_USER_RATE) --run-time $(LOAD_TIME) \
		--max-fail-ratio $(LOAD_MAX_FAIL_RATIO) --max-p95-ms $(LOAD_MAX_P95_MS)

bench: $(BIN)/locust
	$(BIN)/python -m loadtests.bench --models-dir $(LOAD_MODELS_DIR) $(BENCH_ARGS)

# each peer in its own venv under loadtests/.peers (created on first use); PEERS_ARGS="--peers kserve"
PEERS_ARGS ?=
bench-peers: $(BIN)/locust
	$(BIN)/python -m loadtests.peers --models-dir $(LOAD_MODELS_DIR) $(PEERS_ARGS)

soak: $(BIN)/locust
	$(BIN)/python -m loadtests.run_locust --name soak --models-dir $(LOAD_MODELS_DIR) \
		--users $(SOAK_USERS) --capacity-fraction $(SOAK_FRACTION) --run-time $(SOAK_TIME) \
		--max-fail-ratio 0 --max-p95-ms $(SOAK_MAX_P95_MS)

overload: $(BIN)/locust
	$(BIN)/python -m loadtests.overload --models-dir $(LOAD_MODELS_DIR) --factor $(OVERLOAD_FACTOR)
