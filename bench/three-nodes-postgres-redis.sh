#!/usr/bin/env bash
# Starts the release souq and runs examples/loadgen against it; prints loadgen's JSON line.
# RATE (per sender, default 10), SECS (default 20), EXTRA (e.g. "--window 4" for closed loop).
# REDIS_CLUSTER=1: the nodes share a Redis Cluster instead of one Redis (CLUSTER_PORTS, default
# "7101 7102 7103", as .ci/run starts it); loadgen's pids then list each of its masters.
# BENCH_DB names the database (default souq_bench; dropped and made again).
# Build first: cargo build --release --bin souq --example loadgen
set -e
B=${SOUQ:-$(git rev-parse --show-toplevel)/target/release/souq}; L=$(git rev-parse --show-toplevel)/target/release/examples/loadgen
psql -h 127.0.0.1 -d postgres -qc "DROP DATABASE IF EXISTS ${BENCH_DB:-souq_bench} WITH (FORCE)" ; psql -h 127.0.0.1 -d postgres -qc "CREATE DATABASE ${BENCH_DB:-souq_bench}"
export DATABASE_URL=postgres://root@127.0.0.1:5432/${BENCH_DB:-souq_bench} SOUQ_WS_FRAMES_PER_SEC=100000 RUST_LOG=souq=warn
export SOUQ_REDIS_PREFIX=bench$$
if [ -n "${REDIS_CLUSTER:-}" ]; then
  PORTS=${CLUSTER_PORTS:-7101 7102 7103}
  export REDIS_URL=$(for p in $PORTS; do printf 'redis://127.0.0.1:%s,' "$p"; done | sed 's/,$//') SOUQ_REDIS_CLUSTER=true
  RP=$(for p in $PORTS; do pgrep -f "redis-server .*:$p" | head -1; done | paste -sd,)
else
  export REDIS_URL=redis://127.0.0.1:6379
  RP=$(pgrep -f "redis-server .*:6379" | head -1)
fi
$B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null
PIDS=""
for p in 18091 18092 18093; do SOUQ_BIND=127.0.0.1:$p $B > ${TMPDIR:-/tmp}/souq-bench-node$p.log 2>&1 & PIDS="$PIDS,$!"; done
trap 'kill ${PIDS//,/ } 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 1.5
PGP=$(pgrep -d, -f "postgres: .*${BENCH_DB:-souq_bench}" || true)
$L --nodes http://127.0.0.1:18091,http://127.0.0.1:18092,http://127.0.0.1:18093 --chats 200 --members 5 --rate ${RATE:-10} --seconds ${SECS:-20} ${EXTRA:-} --pids ${PIDS#,},$RP${PGP:+,$PGP}
kill ${PIDS//,/ } ; wait 2>/dev/null || true
