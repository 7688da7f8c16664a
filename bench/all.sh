#!/usr/bin/env bash
# Every scenario of docs/benchmarks.md, RUNS times each (default 3): 200 chats x 5 sockets at
# 10 msg/s per sender and closed loop (4 unacked per sender), for the bare ceiling and for
# souq without and with receipts (the chat's seller reads every message) on
# 1 node SQLite, 1 node PostgreSQL and 3 nodes PostgreSQL + Redis, each with a chat's
# sockets five people and five devices of one customer (--devices); the ceiling and souq on
# SQLite at one high fixed rate (FAST msg/s per sender, default 100), for CPU per delivery
# at the same load; then idle sockets (distinct people, devices, the ceiling).
# Appends labelled JSON lines to $OUT and prints the table of medians.
# pipefail: a run that fails (say, loadgen refusing a server that did not start) stops
# the suite rather than leave a row out of the medians.
set -eo pipefail
cd "$(git rev-parse --show-toplevel)"
T=${CARGO_TARGET_DIR:-target}
cargo build --release --bin souq --example loadgen --example ceiling
ulimit -n 20000
RUNS=${RUNS:-3}; SECS=${SECS:-15}; FAST=${FAST:-100}
OUT=${OUT:-${TMPDIR:-/tmp}/souq-bench-$(date +%Y%m%d-%H%M%S).jsonl}
label() { jq -c --arg s "$1" '. + {setup: $s}' >> "$OUT"; }

ceiling() {
  "$T"/release/examples/ceiling 127.0.0.1:19091 2>/dev/null &
  local p=$!; sleep 0.5
  "$T"/release/examples/loadgen --ceiling --nodes http://127.0.0.1:19091 --chats 200 \
    --members 5 --seconds "$SECS" "$@" --pids $p || { kill $p 2>/dev/null; return 1; }
  kill $p; wait $p 2>/dev/null || true
}

for run in $(seq 1 "$RUNS"); do
  echo "run $run of $RUNS" >&2
  ceiling --rate 10 | label "ceiling (bare tokio-tungstenite)"
  ceiling --window 4 | label "ceiling (bare tokio-tungstenite)"
  ceiling --rate "$FAST" | label "ceiling (bare tokio-tungstenite)"
  RATE=$FAST SECS=$SECS bench/one-node-sqlite.sh | label "souq, 1 node, SQLite"
  for load in "" "--window 4" "--receipts" "--window 4 --receipts" \
      "--devices" "--window 4 --devices" "--receipts --devices" "--window 4 --receipts --devices"; do
    RATE=10 SECS=$SECS EXTRA="$load" bench/one-node-sqlite.sh | label "souq, 1 node, SQLite"
    RATE=10 SECS=$SECS EXTRA="$load" bench/one-node-postgres.sh 2>/dev/null | label "souq, 1 node, PostgreSQL"
    RATE=10 SECS=$SECS EXTRA="$load" bench/three-nodes-postgres-redis.sh 2>/dev/null | label "souq, 3 nodes, PostgreSQL + Redis"
  done
  N=${N:-19000} bench/idle-sockets.sh | jq -c '. + {setup: (if .server == "ceiling" then "ceiling (bare tokio-tungstenite)" else "souq, 1 node, SQLite" end)}' >> "$OUT"
done
echo "results: $OUT" >&2
python3 bench/medians.py "$OUT"
