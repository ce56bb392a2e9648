#!/usr/bin/env bash
# Builds and tests examples/consumer, a separate Bazel workspace that uses
# pymanager exactly as README.md's "From another Bazel workspace" says
# (local_repository, then pymanager_dependencies()), so that the snippet
# cannot rot. Offline, like the main build. Extra arguments go to `bazel test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh
cd examples/consumer
bazel test "$@" //...
# Its own Bazel server: stop it, so that it holds no memory after the check.
bazel shutdown
