#!/usr/bin/env bash
# Each public header, included first in a translation unit compiled as C++11
# (Bazel's default for g++ is -std=c++0x) or C++14: the compilation stops
# with exactly one error that says to add -std=c++17, and nothing else (no
# cascade from the C++17 code after it). With g++, and with clang++ when the
# machine has it.
set -euo pipefail
root="$TEST_SRCDIR/${TEST_WORKSPACE:-pymanager}"
work="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0
compilers=(g++)
command -v clang++ >/dev/null && compilers+=(clang++)
count=0
while IFS= read -r header; do
  rel="${header#"$root"/}"
  include="${rel#include/}"
  [ "$rel" = gtest_env/environment.hpp ] && include="$rel"
  case "$include" in pymanager/detail/*) continue ;; esac  # not for users
  printf '#include "%s"\nint main() { return 0; }\n' "$include" > "$work/tu.cc"
  for cxx in "${compilers[@]}"; do
    for std in c++11 c++14; do
      count=$((count + 1))
      if "$cxx" "-std=$std" -I"$root/include" -I"$root" -fsyntax-only "$work/tu.cc" > "$work/out.txt" 2>&1; then
        echo "FAIL: $include compiled with $cxx -std=$std"; failures=$((failures + 1)); continue
      fi
      errors=$(grep -c 'error' "$work/out.txt" || true)
      wanted=$(grep -c 'error: .*pymanager needs C++17 or later: compile with -std=c++17' "$work/out.txt" || true)
      stopped=$(grep -c 'fatal error: .*pymanager: compilation stopped' "$work/out.txt" || true)
      # The #error line is quoted in the source excerpt: count diagnostic lines only.
      diagnostics=$(grep -cE '^[^ ]+:[0-9]+:[0-9]+: (fatal )?error' "$work/out.txt" || true)
      if [ "$wanted" -ne 1 ] || [ "$stopped" -ne 1 ] || [ "$diagnostics" -ne 2 ]; then
        echo "FAIL: $include with $cxx -std=$std: expected the one C++17 error, got $diagnostics diagnostics ($errors lines):"
        cat "$work/out.txt"
        failures=$((failures + 1))
      fi
    done
  done
done < <(find "$root/include/pymanager" "$root/gtest_env" -name '*.hpp' | sort)
[ "$count" -gt 40 ] || { echo "FAIL: only $count compilations: headers not found under $root"; exit 1; }
echo "$count compilations, $failures failures"
[ "$failures" -eq 0 ]
