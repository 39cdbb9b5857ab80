# Shared settings and helpers of the test bed scripts (sourced, not run).
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
# shellcheck shell=bash
COMPOSE_MIN=${COMPOSE_MIN:-2.18.0}
REGISTRY=${STACKOPS_REGISTRY:-127.0.0.1:5000}
STATE_DIR=${STACKOPS_TESTBED_STATE:-/var/lib/stackops-testbed}
REGISTRY_DIR=$STATE_DIR/registry
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/stackops-dockerd.log}

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

# version_ge A B: true when dotted version A >= B.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
