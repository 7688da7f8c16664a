#!/usr/bin/env bash
# Starts the bare ceiling server (examples/ceiling) and runs examples/loadgen --ceiling
# against it: 200 rooms x 5 sockets; prints loadgen's JSON line.
# RATE (per sender, default 10), SECS (default 20), EXTRA (e.g. "--window 4" for closed loop);
# PORT (default 19091).
# Build first: cargo build --release --example loadgen --example ceiling
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}; L=$T/release/examples/loadgen; C=$T/release/examples/ceiling
$C 127.0.0.1:${PORT:-19091} 2>/dev/null &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 0.5
$L --ceiling --nodes http://127.0.0.1:${PORT:-19091} --chats 200 --members 5 --rate ${RATE:-10} --seconds ${SECS:-20} ${EXTRA:-} --pids $P
kill $P; wait $P 2>/dev/null || true
