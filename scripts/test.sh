#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test. Extra arguments
# go to `bazel test` (e.g. a target pattern: scripts/test.sh //tests:config_test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh
if [ "$#" -eq 0 ]; then set -- //...; fi
exec bazel test "$@"
