# stackops.rollback: every developer and CI command. `make test` and `make demo` set up a bare
# machine themselves (virtualenv, Docker engine, Compose v2, local registry, test images).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
BUILD := $(CURDIR)/.build
# Our collection (and community.docker beside it) as Ansible finds installed collections.
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections
export MOLECULE_GLOB := molecule/*/molecule.yml
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

PYTEST := $(BIN)/pytest -p no:cacheprovider --ansible-unit-inject-only

.PHONY: help test demo bench setup venv testbed collections lint ruff ansible-lint sanity build \
        unit integration molecule clean

help:
	@echo "make demo   deploy a demo stack at v1, then v2, and roll it back (sets up everything)"
	@echo "make test   every gate and test suite (sets up everything; CI runs this)"
	@echo "make bench  benchmarks, written to docs/benchmarks.md"
	@echo "phases: venv testbed lint sanity build unit integration molecule"

test:
	@scripts/run-phases venv testbed -- lint sanity build unit integration molecule

setup: venv testbed

venv: $(VENV)/.installed collections

$(VENV)/.installed: requirements-dev.txt
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	@$(BIN)/python -m pip install -q -r requirements-dev.txt
	@touch $@

collections:
	@scripts/link-collections $(BUILD)/collections

testbed:
	@tests/testbed/docker-host.sh
	@tests/testbed/build-images.sh

lint: ruff ansible-lint

ruff:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint:
	$(BIN)/ansible-lint --profile production --offline --strict

sanity:
	@scripts/ansible-test-sanity $${TMPDIR:-/tmp}/stackops-rollback-sanity

build:
	@rm -rf $(BUILD)/dist && mkdir -p $(BUILD)/dist
	$(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/dist .
	@ls $(BUILD)/dist/stackops-rollback-*.tar.gz

unit:
	$(PYTEST) tests/unit

# Integration tests mostly wait on containers: two workers, each test given to whichever is free;
# then, alone, the tests marked serial (they count failed requests or time a switch). Both parts
# always run; the phase fails if either does.
INTEGRATION_WORKERS ?= 2
integration:
	@rc=0; \
	$(PYTEST) -n $(INTEGRATION_WORKERS) --dist worksteal --durations 10 -m "not serial" tests/integration || rc=1; \
	$(PYTEST) --durations 10 -m serial tests/integration || rc=1; \
	exit $$rc

molecule:
	@scripts/molecule-test-all

bench: venv testbed
	@$(BIN)/python bench/run.py $(BENCH)

demo: venv testbed
	@$(BIN)/python scripts/demo.py

clean:
	rm -rf $(BUILD) tests/output
