#!/usr/bin/env bash
# Everything CI checks beyond scripts/test.sh: the whole suite under
# AddressSanitizer+UndefinedBehaviorSanitizer and under ThreadSanitizer,
# clang-tidy, each libFuzzer target for FUZZ_SECONDS (default 60), and the
# separate workspace examples/consumer (scripts/consumer-check.sh), and the
# CMake build with its installed package (scripts/cmake-check.sh).
#   scripts/check.sh [asan] [tsan] [tidy] [fuzz] [consumer] [cmake]      (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(asan tsan tidy fuzz consumer cmake)
scripts/ensure-packages.sh
for step in "${steps[@]}"; do
  start=$(date +%s)
  echo "check: $step"
  case "$step" in
    asan | tsan) bazel test --config="$step" --build_tests_only //... ;;
    tidy) scripts/tidy.sh ;;
    fuzz) scripts/fuzz.sh "${FUZZ_SECONDS:-60}" ;;
    consumer) scripts/consumer-check.sh ;;
    cmake) scripts/cmake-check.sh ;;
    *) echo "check: unknown step '$step' (asan, tsan, tidy, fuzz, consumer, cmake)" >&2; exit 2 ;;
  esac
  echo "check: $step passed in $(( $(date +%s) - start ))s"
done
