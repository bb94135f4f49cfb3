# Everything a developer or CI runs. The venv and the Kubernetes binaries are made on first use:
# `make demo` and `make test` work on a fresh clone with nothing but Python 3.11+ and Go 1.26.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers (`-n auto`: tests/conftest.py picks the count). Later flags win:
# PYTEST_ARGS=-n0 runs serially, PYTEST_ARGS="-n 2" with two workers.
XDIST  := -n auto

.PHONY: all venv build lint fmt crds manifests test test-unit test-contract test-cluster test-e2e demo dev-up dev-down bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Kubernetes, etcd and helm from Go modules, cached outside the tree (no rebuild when cached).
build: $(STAMP)
	$(BIN)/vllm-sleep dev build

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format operator tests bench
	$(BIN)/ruff check --fix operator tests bench

# crds/ from the pydantic models, then copied where they ship (deploy/base, the chart's crds/).
crds: $(STAMP)
	$(BIN)/python -m vllm_sleep.api.crdgen
	$(BIN)/python -m vllm_sleep.packaging.manifests --crds

# deploy/base, the chart's generated files and docs/install.md's values reference.
manifests: crds
	$(BIN)/python -m vllm_sleep.packaging.manifests

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(XDIST) $(PYTEST_ARGS)

test-contract: $(STAMP)
	$(BIN)/pytest -q tests/contract $(XDIST) $(PYTEST_ARGS)

test-cluster: build
	$(BIN)/pytest -q tests/cluster $(XDIST) $(PYTEST_ARGS)

test-e2e: build
	$(BIN)/pytest -q tests/e2e $(XDIST) $(PYTEST_ARGS)

# The whole suite: linters, then unit, contract, cluster and e2e tests in one pytest run, spread
# over xdist workers (each worker starts one control plane for its cluster and e2e tests).
test: lint build
	$(BIN)/pytest -q tests $(XDIST) $(PYTEST_ARGS)

demo: build
	$(BIN)/vllm-sleep demo

dev-up: build
	$(BIN)/vllm-sleep dev up

dev-down: $(STAMP)
	$(BIN)/vllm-sleep dev down

bench: $(STAMP)
	$(BIN)/python bench/sim_bench.py
	$(BIN)/python bench/gateway_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
