#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz/ with clang (AddressSanitizer
# and UndefinedBehaviorSanitizer) and runs each for SECONDS (default 60),
# starting from its seed corpus in tests/fuzz/corpus/<target>/. A crash stops
# the run with a non-zero exit, and the input that crashed is left in the
# work folder it names: make it a regression test.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: config keeper http
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(config keeper http)
PYMANAGER_EXTRA_PACKAGES="clang libclang-rt-14-dev" scripts/ensure-packages.sh
clang="$(command -v clang++-14 || command -v clang++)"
work="${FUZZ_WORK:-$(mktemp -d)}"
mkdir -p "$work"
# Debian's cpp-httplib is compiled with these: the headers must see them too.
defines=(-DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT)
for target in "${targets[@]}"; do
  echo "fuzz: building $target"
  "$clang" -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined,float-cast-overflow -fno-sanitize-recover=all \
    "${defines[@]}" -Iinclude "tests/fuzz/${target}_fuzz.cc" -o "$work/${target}_fuzz" -lcpp-httplib -lpthread
  mkdir -p "$work/$target-corpus"
  echo "fuzz: running $target for ${seconds}s"
  (cd "$work" && "./${target}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
     -print_final_stats=1 "$work/$target-corpus" "$OLDPWD/tests/fuzz/corpus/$target") \
    > "$work/$target.log" 2>&1 || { tail -n 60 "$work/$target.log"; echo "fuzz: $target FAILED (inputs in $work)"; exit 1; }
  grep -E "^stat::number_of_executed_units|^Done" "$work/$target.log" | sed "s/^/fuzz: $target: /" || true
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
