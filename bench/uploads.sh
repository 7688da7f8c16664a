#!/usr/bin/env bash
# Starts the release souq (SQLite, files in a folder beside it) and runs
# examples/uploadbench against it: UPLOADS concurrent uploads (default 50) of MIB MiB
# (default 10). Prints uploadbench's JSON line.
# Build first: cargo build --release --bin souq --example uploadbench
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}; B=${SOUQ:-$T/release/souq}; U=$T/release/examples/uploadbench
D=${TMPDIR:-/tmp}/souq-upbench
rm -rf "$D"; mkdir -p "$D"
export DATABASE_URL=sqlite://$D/souq.db RUST_LOG=souq=warn SOUQ_MAX_FILE_BYTES=$((64 * 1024 * 1024)) SOUQ_MAX_ORG_FILE_BYTES=0
$B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null
SOUQ_BIND=127.0.0.1:18082 $B > "$D/node.log" 2>&1 &
P=$!
trap 'kill $P 2>/dev/null || true; rm -rf "$D"' EXIT
sleep 1
$U --node http://127.0.0.1:18082 --uploads ${UPLOADS:-50} --mib ${MIB:-10} --pid $P
