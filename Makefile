# ExplainServe: every developer and CI entry point. `make help` lists the targets.
# Both `make run` and `make test` set everything up on a fresh machine (venv, Python deps, the
# native module) and are fast when nothing changed: each step is a stamp under .make/ that is
# redone only when its inputs change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMPS := .make
# pyo3's build script must see the venv's interpreter, never whatever python3 is on PATH.
export PYO3_PYTHON := $(abspath $(PY))
export VIRTUAL_ENV := $(abspath $(VENV))
# No model hub at run time: everything the server and tests load is local.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

BUF_VERSION := v1.50.0
BUF := $(STAMPS)/bin/buf
RUST_SOURCES := Cargo.toml $(wildcard Cargo.lock) $(shell find native -name '*.rs' -o -name Cargo.toml 2>/dev/null)
PORT ?= 50051
ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMPS)/deps: pyproject.toml | $(PY)
	@mkdir -p $(STAMPS)
	@# The project itself (editable, which also builds the native module once) and dev extras.
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

$(STAMPS)/native: $(STAMPS)/deps $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --quiet --skip-install 2>&1 | grep -v '^📦\|^🔗\|^🐍\|^🛠' || true
	@$(PY) -c 'import explainserve._native' || { echo "native module failed to build"; exit 1; }
	@touch $@

.PHONY: install
install: $(STAMPS)/native ## Create .venv, install all dependencies, build the native module

# buf (proto style lint), built from the Go module proxy into .make/bin.
$(BUF):
	@mkdir -p $(STAMPS)/bin
	GOBIN=$(abspath $(STAMPS)/bin) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

.PHONY: proto
proto: install ## Regenerate server/explainserve/v1 from proto/ (commit the result)
	$(PY) scripts/gen_proto.py

.PHONY: lint-proto
lint-proto: $(BUF) ## Lint the protos with buf's STANDARD + COMMENTS rules
	$(BUF) lint

.PHONY: run
run: install ## Start the server on the embedded default model (PORT=50051, ARGS=...)
	$(VENV)/bin/explainserve serve --port $(PORT) $(ARGS)

.PHONY: test
test: install $(BUF) ## Everything CI checks: Rust fmt/clippy/tests, buf, ruff, mypy, stubs, pytest
	$(BUF) lint
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test -p explainserve-core --quiet
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest explainserve._native
	$(PY) -m pytest -q

.PHONY: bench
bench: install ## Benchmarks (bench/): native core vs numpy reference
	$(PY) bench/native.py

.PHONY: fmt
fmt: install ## Format Rust and Python
	cargo fmt --all
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: clean
clean: ## Remove build outputs and the venv
	rm -rf $(VENV) $(STAMPS) target server/explainserve/_native*.so
