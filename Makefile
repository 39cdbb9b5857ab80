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
export PYTEST
# Subsets (see docs/developing.md): K selects tests by name as pytest -k does, TESTS by file or
# node id, SCENARIO one Molecule scenario (or several, space-separated).
K ?=
TESTS ?=
SCENARIO ?=
export K TESTS SCENARIO
# Targets that use the Docker engine hold the test bed's lock: one run per engine at a time.
LOCKED := scripts/testbed-lock

.PHONY: help test check demo bench setup venv testbed collections lint ruff ansible-lint ee sanity build \
        unit integration integration-parallel integration-serial smoke molecule faults reliability \
        reliability-check clean

help:
	@echo "make demo   deploy a demo stack at v1, then v2, and roll it back (sets up everything)"
	@echo "make check  the inner loop: lint, sanity, unit tests and a recreate and a blue_green rollback"
	@echo "make test   every gate and test suite (sets up everything; CI runs this)"
	@echo "make bench  benchmarks, written to docs/benchmarks.md"
	@echo "make reliability  docs/reliability.md from the last run's fault matrix (make faults runs it alone)"
	@echo "phases: venv testbed lint sanity build unit integration (integration-parallel, integration-serial)"
	@echo "        smoke molecule"
	@echo "subsets: make unit K=expr | make integration K=expr TESTS=tests/integration/test_x.py[::name]"
	@echo "         make molecule SCENARIO=recreate"

# The integration tests' parallel part mostly waits on containers: Molecule (its own engines) and
# the gates run beside it. The serial part then runs alone, as it must (see scripts/integration).
# The fault matrix's results are the run's own: cleared first, checked last (reliability-check).
test:
	@rm -rf tests/output/reliability
	@$(LOCKED) scripts/run-phases venv testbed -- integration-parallel+molecule+lint,sanity,build,ee,unit \
	    integration-serial reliability-check

check:
	@$(LOCKED) scripts/run-phases venv testbed -- lint sanity unit smoke

setup: venv testbed

venv: $(VENV)/.installed collections

$(VENV)/.installed: requirements-dev.txt
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	@$(BIN)/python -m pip install -q -r requirements-dev.txt
	@touch $@

collections:
	@scripts/link-collections $(BUILD)/collections

testbed: venv
	@$(LOCKED) sh -c 'tests/testbed/docker-host.sh && $(BIN)/python tests/testbed/leftovers.py && tests/testbed/build-images.sh'

lint: ruff ansible-lint

# The execution environment for AWX: meta/execution-environment.yml read by ansible-builder 3.x
# (introspect), and docs/examples/execution-environment turned into a build context (create).
ee: venv
	@scripts/execution-environment-check

ruff:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint:
	$(BIN)/ansible-lint --profile production --offline --strict

sanity:
	@scripts/ansible-test-sanity $${TMPDIR:-/tmp}

build:
	@rm -rf $(BUILD)/dist && mkdir -p $(BUILD)/dist
	$(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/dist .
	@ls $(BUILD)/dist/stackops-rollback-*.tar.gz

unit:
	$(PYTEST) $${K:+-k "$$K"} $${TESTS:-tests/unit}

# Integration tests mostly wait on containers: parallel workers, then, alone, the tests marked
# serial (they count failed requests or time a switch). See scripts/integration.
export INTEGRATION_WORKERS ?= 2
integration:
	@$(LOCKED) scripts/integration

integration-parallel:
	@$(LOCKED) scripts/integration --part parallel

integration-serial:
	@$(LOCKED) scripts/integration --part serial

# One recreate and one blue_green rollback end to end on the real engine, verified.
smoke:
	@$(LOCKED) scripts/integration -m smoke

molecule:
	@$(LOCKED) scripts/molecule-test-all $(SCENARIO)

# The fault matrix (tests marked fault) alone; then `make reliability` writes docs/reliability.md
# from the last run's results, which `make test` checks (at least 30 cases, all passed, no row lost).
faults:
	@$(LOCKED) scripts/integration -m fault

reliability:
	$(BIN)/python scripts/reliability.py --out docs/reliability.md

reliability-check:
	$(BIN)/python scripts/reliability.py --check

bench: venv testbed
	@$(LOCKED) $(BIN)/python bench/run.py $(BENCH)

demo: venv testbed
	@$(LOCKED) $(BIN)/python scripts/demo.py

clean:
	rm -rf $(BUILD) tests/output
