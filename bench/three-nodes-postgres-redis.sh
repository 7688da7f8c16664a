#!/usr/bin/env bash
# Starts the release souq and runs examples/loadgen against it; prints loadgen's JSON line.
# RATE (per sender, default 10), SECS (default 20), EXTRA (e.g. "--window 4" for closed loop);
# PORT (the first of three, default 18091) and DB (default souq_bench, dropped and made
# again) to run beside another sitting.
# REDIS_CLUSTER=1: the nodes share a Redis Cluster instead of one Redis (CLUSTER_PORTS, default
# "7101 7102 7103", as .ci/run starts it); loadgen's pids then list each of its masters.
# Build first: cargo build --release --bin souq --example loadgen
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}; B=${SOUQ:-$T/release/souq}; L=$T/release/examples/loadgen
psql -h 127.0.0.1 -d postgres -qc "DROP DATABASE IF EXISTS ${DB:-souq_bench} WITH (FORCE)" ; psql -h 127.0.0.1 -d postgres -qc "CREATE DATABASE ${DB:-souq_bench}"
export DATABASE_URL=postgres://root@127.0.0.1:5432/${DB:-souq_bench} SOUQ_WS_FRAMES_PER_SEC=100000 RUST_LOG=souq=warn
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
P0=${PORT:-18091}
for p in $P0 $((P0 + 1)) $((P0 + 2)); do SOUQ_BIND=127.0.0.1:$p $B > ${TMPDIR:-/tmp}/souq-bench-node$p.log 2>&1 & PIDS="$PIDS,$!"; done
trap 'kill ${PIDS//,/ } 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 1.5
PGP=$(pgrep -d, -f "postgres: .*${DB:-souq_bench}" || true)
$L --nodes http://127.0.0.1:$P0,http://127.0.0.1:$((P0 + 1)),http://127.0.0.1:$((P0 + 2)) --chats 200 --members 5 --rate ${RATE:-10} --seconds ${SECS:-20} ${EXTRA:-} --pids ${PIDS#,},$RP${PGP:+,$PGP}
kill ${PIDS//,/ } ; wait 2>/dev/null || true
