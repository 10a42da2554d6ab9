# harstream developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup tools demo data train evaluate compare format lint typecheck test test-unit test-integration faults bench clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[ml,stream,dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

TOOLS_STAMP := $(VENV)/.tools-$(shell cat deploy/tools/install-validators.sh pyproject.toml | sha1sum | cut -c1-12)
$(TOOLS_STAMP): $(STAMP) deploy/tools/install-validators.sh
	bash deploy/tools/install-validators.sh $(VENV)
	rm -f $(VENV)/.tools-* && touch $(TOOLS_STAMP)

setup: $(STAMP) ## Create .venv and install harstream with all extras

tools: $(TOOLS_STAMP) ## Install the deployment validators (kubectl, promtool, checkov, docker-compose) and chromium for the console test

demo: $(STAMP) ## The main job: the whole pipeline on embedded Kafka + model server, replaying the test subjects live
	$(BIN)/harstream demo $(DEMO_ARGS)

data: $(STAMP) ## Cache the HAPT recordings and print window counts per split
	$(BIN)/harstream data

train: $(STAMP) ## Train harstream's model (seed 0) and export it as the next version in models/har
	$(BIN)/harstream train --model harstream --seed 0 --export models/har

evaluate: $(STAMP) ## Evaluate the newest model in models/har on the test subjects (JSON)
	$(BIN)/harstream evaluate --model models/har --split test --json

compare: $(STAMP) ## Re-run the paper's comparison table into reports/comparison.md (~30 min)
	$(BIN)/harstream compare --seeds 0,1,2

format: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format shared services tests benchmarks
	$(BIN)/ruff check --fix shared services tests benchmarks

lint: $(STAMP) ## ruff
	$(BIN)/ruff check shared services tests benchmarks
	$(BIN)/ruff format --check shared services tests benchmarks

typecheck: $(STAMP) ## mypy (strict) on shared/
	$(BIN)/mypy

test: $(STAMP) $(TOOLS_STAMP) ## Lint, typecheck, unit and integration tests (installs the validators)
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/pytest tests

test-unit: $(STAMP) ## Unit tests only (no I/O)
	$(BIN)/pytest tests/unit

test-integration: $(STAMP) $(TOOLS_STAMP) ## Integration tests only
	$(BIN)/pytest tests/integration

faults: $(STAMP) ## Fault-injection suite: kill/pause/rebalance the local pipeline, write reports/reliability.md (~40 min)
	$(BIN)/harstream faults --report $(FAULTS_ARGS)

bench: $(STAMP) ## Print throughput figures (preprocessing, model), the capacity ramp and scale-out (~20 min; BENCH_CAPACITY_ARGS)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.capacity $(BENCH_CAPACITY_ARGS)
	$(BIN)/python -m benchmarks.bench_alerting
	$(BIN)/python -m benchmarks.scaleout

clean: ## Remove caches and build artefacts (keeps .venv and models/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
