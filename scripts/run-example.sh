#!/usr/bin/env bash
# Installs what is missing, builds, and runs pymanager on examples/pymanager.json
# (Ctrl-C stops it and everything it launched). Extra arguments go to pymanager.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh
bazel build //tools:pymanager //examples:all
exec bazel run //tools:pymanager -- -f examples/pymanager.json "$@"
