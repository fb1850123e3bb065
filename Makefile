# badgestream developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the developer commands
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install OS packages the project needs (Java, Maven, PostgreSQL) if missing
	@bash deploy/install-system-deps.sh

# Every Python dependency comes from requirements.lock (exact versions with hashes); badgestream
# itself is installed on top, editable, without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create the virtualenv, install badgestream (test and dev extras) from requirements.lock, compile the engine
	@$(BIN)/python -m deploy.compile_engine

.PHONY: lock
lock: venv ## re-resolve requirements.lock (exact versions, hashes) after changing dependencies in pyproject.toml
	$(BIN)/uv pip compile pyproject.toml requirements-build.in --extra test --extra dev --generate-hashes \
		--python-version 3.11 --quiet --output-file requirements.lock

.PHONY: kafka-libs
kafka-libs: venv ## fetch Apache Kafka from Maven Central into deploy/kafka/lib
	@$(BIN)/python -m deploy.kafka.broker fetch

.PHONY: setup
setup: deps venv kafka-libs ## everything a fresh machine needs

.PHONY: run
run: setup ## the main job: broker, worker, sink, demo catalog and events, awards shown; Ctrl-C stops all
	$(BIN)/badgestream up

.PHONY: test
test: setup lint ## lint, then every test (starts and stops its own broker and PostgreSQL)
	@started=$$(date +%s); \
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	echo "[make test] pytest exit $$rc after $$(( $$(date +%s) - started ))s"; exit $$rc

.PHONY: test-unit
test-unit: venv ## only the pure tests (no broker, no database)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-long
test-long: setup ## the long reliability variants
	$(BIN)/python -m pytest tests/reliability --long $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff, mypy and vulture (dead code)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/vulture

.PHONY: bench
bench: setup ## all benchmarks (see bench/*/README.md)
	$(BIN)/python -m bench.engine.run
	$(BIN)/python -m bench.worker.run
	$(BIN)/python -m bench.sink.run
	$(BIN)/python -m bench.replay.run
	$(BIN)/python -m bench.notify.run
	$(BIN)/python -m bench.api.run

.PHONY: clean
clean: ## stop local services and remove local state (var/)
	-$(BIN)/python -m deploy.kafka.broker stop
	-$(BIN)/python -m deploy.postgres.server stop
	rm -rf var
