#!/usr/bin/env bash
# Starts the release souq and runs examples/loadgen against it; prints loadgen's JSON line.
# RATE (per sender, default 10), SECS (default 20), EXTRA (e.g. "--window 4" for closed loop);
# PORT (default 18081) and TMPDIR (the database and the log) to run beside another sitting.
# DB=FILE: a SQLite file to measure as it is (say, one examples/scalebench filled), not a
# fresh one.
# Build first: cargo build --release --bin souq --example loadgen
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}; B=${SOUQ:-$T/release/souq}; L=$T/release/examples/loadgen
export DATABASE_URL=sqlite://${DB:-${TMPDIR:-/tmp}/souq-bench.db} SOUQ_WS_FRAMES_PER_SEC=100000 SOUQ_WEBHOOK_ALLOW_PRIVATE=true RUST_LOG=souq=warn
[ -n "${DB:-}" ] || rm -f ${TMPDIR:-/tmp}/souq-bench.db*
# A given file may have the organisation from an earlier run.
$B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null 2>&1 || [ -n "${DB:-}" ]
SOUQ_BIND=127.0.0.1:${PORT:-18081} $B > ${TMPDIR:-/tmp}/souq-bench-node.log 2>&1 &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 1
$L --nodes http://127.0.0.1:${PORT:-18081} --chats 200 --members 5 --rate ${RATE:-10} --seconds ${SECS:-20} ${EXTRA:-} --pids $P
kill $P; wait $P 2>/dev/null || true
