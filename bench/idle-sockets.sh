#!/usr/bin/env bash
# Server memory per idle socket: N sockets (default 19000) that only stay connected, to souq
# (1 node, SQLite) and to the bare ceiling server. Prints loadgen's JSON line for each.
# Build first: cargo build --release --bin souq --example loadgen --example ceiling
set -e
ROOT=$(git rev-parse --show-toplevel)
B=${SOUQ:-$ROOT/target/release/souq}; L=$ROOT/target/release/examples/loadgen; C=$ROOT/target/release/examples/ceiling
N=${N:-19000}
ulimit -n 20000
export DATABASE_URL=sqlite://${TMPDIR:-/tmp}/souq-idle.db RUST_LOG=souq=warn
rm -f ${TMPDIR:-/tmp}/souq-idle.db*
$B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null
SOUQ_BIND=127.0.0.1:18083 $B > ${TMPDIR:-/tmp}/souq-idle-node.log 2>&1 &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 1
$L --nodes http://127.0.0.1:18083 --chats 200 --idle $N --seconds 5 --pids $P
kill $P; wait $P 2>/dev/null || true

$C 127.0.0.1:19093 2>/dev/null &
P=$!
sleep 0.5
$L --ceiling --nodes http://127.0.0.1:19093 --chats 200 --idle $N --seconds 5 --pids $P
kill $P; wait $P 2>/dev/null || true
