# Every install step lives here: CI (.ci/run) and people call the same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-installed
# The editable install is a tree of links (setuptools "strict" mode, which mypy can
# follow); it must be rebuilt when a module is added or removed, not when one is edited,
# and when the C source is edited (the install compiles it).
MANIFEST := $(VENV)/.manifest
_ := $(shell mkdir -p $(VENV) && find workers tasks schedules migrations -name '*.py' -o -name '*.mako' -o -name '*.c' 2>/dev/null | sort > $(MANIFEST).new && (cmp -s $(MANIFEST).new $(MANIFEST) || mv $(MANIFEST).new $(MANIFEST)))

PYTEST_ARGS ?=

# Fault scenarios append their figures here; `make faults` prints them as one JSON object.
FAULTS_REPORT := build/faults-report.jsonl

.PHONY: tools schemas install demo test faults test-unit test-integration test-e2e validate-deploy lint format typecheck check bench bench-quick bench-db bench-db-quick services clean

install: $(VENV)/.installed

# The real tools the operations tests drive: Prometheus + promtool, Alertmanager + amtool
# (tests/alertmanager.py) and a headless Chromium (with its driver) for Flower. Installed
# from Debian once; skipped when present.
# Then celery-node, the Node.js producer of tests/e2e/test_foreign_producers.py, from
# tests/node/package-lock.json (skipped, and those tests skip, where node is absent).
TOOLS := prometheus promtool prometheus-alertmanager amtool chromium chromedriver
NODE_DIR := tests/node
tools: $(NODE_DIR)/node_modules/.installed
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from Debian"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager chromium chromium-driver >/dev/null; \
	fi

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
	  npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the celery-node producer tests will be skipped"; fi

$(DEPS_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' --config-settings editable_mode=strict
	touch $@

$(VENV)/.installed: $(DEPS_STAMP) $(MANIFEST) $(wildcard workers/adapters/scorers/*.c)
	$(BIN)/python -m pip install -q --no-deps -e . --config-settings editable_mode=strict
	touch $@

demo: install
	$(BIN)/pynomaly-workers migrate
	$(BIN)/pynomaly-workers demo

# Scenarios marked `slow` (over ~30 s each) run only in `make faults`.
test: install tools
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# Fault injection (tests/faults): real workers, a redis-server per scenario on ports
# 6391-6399. The last line printed is one JSON object with each scenario's figures.
faults: install
	mkdir -p $(dir $(FAULTS_REPORT)) && rm -f $(FAULTS_REPORT)
	PYNOMALY_FAULTS_REPORT=$(abspath $(FAULTS_REPORT)) $(BIN)/pytest tests/faults $(PYTEST_ARGS); \
	status=$$?; $(BIN)/python -m tests.faults.report $(FAULTS_REPORT); exit $$status

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: install tools
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

# Offline checks of docker-compose.yml, deploy/ (Dockerfile, Kubernetes, PostgreSQL and
# Redis configs) against their schemas and linters; no Docker or cluster needed.
validate-deploy: install
	$(BIN)/pytest tests/unit/test_deploy_files.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy workers tasks schedules migrations tests $(wildcard benchmarks)

check: lint typecheck test

bench: install
	$(BIN)/python -m benchmarks --json

bench-quick: install
	$(BIN)/python -m benchmarks --quick --json

# The read side at 10M anomalies (1M quick) in its own database, pynomaly_bench, which is
# dropped at the end: it takes a few GB.
BENCH_DB_ARGS ?= --drop

bench-db: install
	$(BIN)/python -m benchmarks.db --json $(BENCH_DB_ARGS)

bench-db-quick: install
	$(BIN)/python -m benchmarks.db --quick --json $(BENCH_DB_ARGS)

# The public tasks' kwargs as JSON Schema files (workers/schemas/), from workers/contract.py.
schemas: install
	$(BIN)/python -m pynomaly_workers.schemas

# Start the local PostgreSQL, Redis and RabbitMQ the tests use, if they are not answering.
services:
	bash .ci/services

clean:
	rm -rf build .pynomaly .pytest_cache .mypy_cache .ruff_cache
