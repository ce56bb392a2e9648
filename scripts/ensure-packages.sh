#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the build needs, if any is missing.
# As root it runs apt-get itself, otherwise through sudo; without either it
# prints the exact install line and stops. Safe to run again: it does
# nothing when everything is installed.
set -euo pipefail

# python3-jsonschema: tests/schema_test checks the config schema with a validator
# that is not ours.
packages=(bazel-bootstrap nlohmann-json3-dev libcpp-httplib-dev libgtest-dev libgmock-dev g++ python3-jsonschema)
# Callers that need more (the fuzzers: clang) name them here.
read -r -a extra <<< "${PYMANAGER_EXTRA_PACKAGES:-}"
packages+=("${extra[@]}")
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

install_line="apt-get update && apt-get install -y ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  echo "missing packages: ${missing[*]}" >&2
  echo "install them with:  sudo sh -c '$install_line'" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
