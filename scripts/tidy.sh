#!/usr/bin/env bash
# clang-tidy (the checks in .clang-tidy, warnings as errors) on every
# translation unit of the library's users: the binary (which includes the
# whole library, the HTTP API and ctl) and the GoogleTest environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYMANAGER_EXTRA_PACKAGES="clang-tidy" scripts/ensure-packages.sh
tidy="$(command -v clang-tidy-14 || command -v clang-tidy)"
flags=(-std=c++17 -Iinclude -I. -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT)
status=0
for unit in tools/pymanager_main.cc gtest_env/environment.cc gtest_env/main.cc; do
  echo "tidy: $unit"
  "$tidy" --quiet "$unit" -- "${flags[@]}" || status=1
done
[ "$status" -eq 0 ] && echo "tidy: clean"
exit "$status"
