#!/bin/sh
# Runs ping.json through the pymanager binary (from the runfiles' root, where
# the config's executable path is taken from; the plugin is found next to
# ping.json) and checks that the plugin was loaded and verified the service.
set -u
cd "${TEST_SRCDIR:?run with bazel test}/pymanager" || exit 1
log="${TEST_TMPDIR:-/tmp}/pymanager.log"
tools/pymanager -v -f examples/plugin/ping.json >"$log" 2>&1 &
pid=$!
# A bounded wait for the verdict (30 s), ended early when pymanager exits.
tries=0
while ! grep -q "verified by example.ping.PingVerifier" "$log"; do
  kill -0 "$pid" 2>/dev/null || break
  tries=$((tries + 1))
  [ "$tries" -gt 300 ] && break
  sleep 0.1
done
kill -TERM "$pid" 2>/dev/null
wait "$pid"
status=$?
cat "$log"
fail() { echo "FAIL: $1"; exit 1; }
grep -q "loaded plugin .*examples/plugin/libping_verifier.so (module example.ping)" "$log" || fail "no 'loaded plugin' line"
grep -q "verified by example.ping.PingVerifier" "$log" || fail "the service was not verified by the plugin"
grep -q "answered a PING" "$log" || fail "the service never saw a PING"
[ "$status" -eq 0 ] || fail "pymanager exited with $status after SIGTERM"
echo PASS
