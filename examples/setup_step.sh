#!/bin/sh
# The one-shot set-up step of integration.json (think: a database migration).
# It runs to completion before the greeter starts; a non-zero exit fails the
# set-up and the tests are skipped. It sees the greeter's port already.
set -eu
data="${TEST_TMPDIR:-${TMPDIR:-/tmp}}/greeter-data"
mkdir -p "$data"
done_file="$data/setup-$PYMANAGER_PORT_GREETER.done"
echo "prepared for port $PYMANAGER_PORT_GREETER" > "$done_file"
echo "setup: wrote $done_file"
