#!/usr/bin/env bash
# Webhooks across a node kill: two nodes on PostgreSQL and Redis share the webhook work.
# Every chat's sender is on the first node and the chats' other members are offline
# (MEMBERS, default 1: the sender's own socket only); the second node is killed (-9) half
# way through the sending. loadgen --webhook reports events/s, commit-to-receiver latency,
# and the events missing or come twice by event id (it waits up to 30 s after the sends
# for the events the dead node held: their leases run out after --webhook-timeout + 10 s).
# RATE (per sender, default 10), SECS (default 20).
# Build first: cargo build --release --bin souq --example loadgen
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}; B=${SOUQ:-$T/release/souq}; L=$T/release/examples/loadgen
psql -h 127.0.0.1 -d postgres -qc "DROP DATABASE IF EXISTS souq_bench WITH (FORCE)" ; psql -h 127.0.0.1 -d postgres -qc "CREATE DATABASE souq_bench"
export DATABASE_URL=postgres://root@127.0.0.1:5432/souq_bench SOUQ_WS_FRAMES_PER_SEC=100000 RUST_LOG=souq=warn
export REDIS_URL=redis://127.0.0.1:6379 SOUQ_REDIS_PREFIX=bench$$ SOUQ_WEBHOOK_ALLOW_PRIVATE=true
$B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null
SOUQ_BIND=127.0.0.1:18091 $B > ${TMPDIR:-/tmp}/souq-bench-node18091.log 2>&1 &
A=$!
SOUQ_BIND=127.0.0.1:18092 $B > ${TMPDIR:-/tmp}/souq-bench-node18092.log 2>&1 &
K=$!
trap 'kill $A $K 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 1.5
SECS=${SECS:-20}
# loadgen takes a few seconds to set up its chats before it sends.
( sleep $(( SECS / 2 + 4 )); kill -9 $K 2>/dev/null && echo "killed node 18092" >&2 ) &
PGP=$(pgrep -d, -f "postgres: .*souq_bench" || true)
$L --nodes http://127.0.0.1:18091 --chats 200 --members ${MEMBERS:-1} --rate ${RATE:-10} --seconds $SECS --webhook ${EXTRA:-} --pids $A${PGP:+,$PGP}
kill $A; wait $A 2>/dev/null || true
