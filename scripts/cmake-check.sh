#!/usr/bin/env bash
# The CMake build and its installed package, as a user gets them:
#  1. configure and build the top-level CMakeLists.txt (-Wall -Wextra) in a
#     temporary build folder with examples/greeter_test (pymanager_add_test
#     in the tree), run it with ctest, then `cmake --install` into a
#     temporary prefix;
#  2. the installed binary execs the installed keeper (`pymanager -v` would
#     say "keeper forked" otherwise) and runs a config;
#  3. examples/cmake, configured with CMAKE_PREFIX_PATH=<prefix> so that
#     find_package(pymanager CONFIG REQUIRED) finds the install, built and run
#     with `ctest --output-on-failure`;
#  4. pymanager.pc: a one-file program built with
#     `g++ -std=c++17 $(pkg-config --cflags --libs pymanager)` parses a
#     config and prints the version.
# Everything goes to one temporary folder, removed at the end (KEEP_TMP=1 keeps it).
#   scripts/cmake-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
PYMANAGER_EXTRA_PACKAGES="cmake pkg-config" scripts/ensure-packages.sh
tmp="$(mktemp -d "${TMPDIR:-/tmp}/pymanager-cmake.XXXXXX")"
if [ "${KEEP_TMP:-0}" = 1 ]; then
  echo "cmake-check: keeping $tmp"
else
  trap 'rm -rf "$tmp"' EXIT
fi
jobs="${CMAKE_CHECK_JOBS:-2}"
prefix="$tmp/prefix"

echo "cmake-check: configure, build and install the project into $prefix"
cmake -S "$root" -B "$tmp/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYMANAGER_WARNINGS=ON -DPYMANAGER_BUILD_EXAMPLES=ON \
  -DCMAKE_INSTALL_PREFIX="$prefix" >"$tmp/configure.log" || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/build" -j "$jobs" >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log"; echo "cmake-check: the build failed" >&2; exit 1; }
# Warnings are reported, not fatal: each distinct one once.
warnings="$(grep -E "warning:" "$tmp/build.log" | sort -u || true)"
echo "cmake-check: $(printf '%s' "$warnings" | grep -c . || true) distinct compiler warnings"
[ -z "$warnings" ] || printf '%s\n' "$warnings"
echo "cmake-check: examples/greeter_test in the build tree (ctest)"
(cd "$tmp/build" && env -u PYMANAGER_KEEPER ctest --output-on-failure --timeout 120)
cmake --install "$tmp/build" --prefix "$prefix" >"$tmp/install.log"
for file in bin/pymanager bin/pymanager-keeper include/pymanager/pymanager.hpp include/gtest_env/environment.hpp \
            lib/cmake/pymanager/pymanagerConfig.cmake lib/cmake/pymanager/pymanagerConfigVersion.cmake \
            lib/cmake/pymanager/pymanagerTest.cmake lib/pkgconfig/pymanager.pc; do
  [ -e "$prefix/$file" ] || { echo "cmake-check: not installed: $file" >&2; exit 1; }
done

echo "cmake-check: the installed binary execs the installed keeper"
cat >"$tmp/one.json" <<'JSON'
{"modules": {"pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}},
 "processes": {"step": {"executable": "sh", "arguments": ["-c", "echo step ran"],
   "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"expect_code": 0}}}}}
JSON
(cd "$tmp" && env -u PYMANAGER_KEEPER timeout 60 "$prefix/bin/pymanager" -v -f one.json) >"$tmp/run.log" 2>&1 ||
  { cat "$tmp/run.log"; echo "cmake-check: the installed pymanager failed" >&2; exit 1; }
grep -q "step | step ran" "$tmp/run.log" || { cat "$tmp/run.log"; exit 1; }
if grep -q "keeper forked" "$tmp/run.log"; then
  cat "$tmp/run.log"; echo "cmake-check: the installed pymanager did not find its keeper" >&2; exit 1
fi
"$prefix/bin/pymanager" -V

echo "cmake-check: examples/cmake against the installed package (find_package + ctest)"
cmake -S "$root/examples/cmake" -B "$tmp/example" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_FLAGS="-Wall -Wextra" >"$tmp/example-configure.log" || { cat "$tmp/example-configure.log"; exit 1; }
cmake --build "$tmp/example" -j "$jobs" >"$tmp/example-build.log" 2>&1 || { cat "$tmp/example-build.log"; exit 1; }
(cd "$tmp/example" && env -u PYMANAGER_KEEPER ctest --output-on-failure --timeout 120)

echo "cmake-check: pymanager.pc (g++ \$(pkg-config --cflags --libs pymanager))"
cat >"$tmp/pc_check.cc" <<'CPP'
#include <iostream>

#include "pymanager/pymanager.hpp"

int main() {
  auto config = pymanager::parse_config(
      nlohmann::ordered_json::parse(R"J({"processes": {"web": {"executable": "python3", "arguments": ["-m", "http.server"]}}})J"),
      pymanager::builtin_verifiers());
  std::cout << "pymanager " << pymanager::version() << ": " << config.processes.size() << " process, "
            << config.processes.at(0).name << "\n";
  return config.processes.size() == 1 ? 0 : 1;
}
CPP
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
read -r -a pc_flags <<<"$(pkg-config --cflags --libs pymanager)"
g++ -std=c++17 -o "$tmp/pc_check" "$tmp/pc_check.cc" "${pc_flags[@]}"
"$tmp/pc_check"
echo "cmake-check: passed"
