#!/usr/bin/env bash
# One souq node on PostgreSQL with the in-process bus; prints loadgen's JSON line.
# RATE (per sender, default 10), SECS (default 20), EXTRA (e.g. "--window 4" for closed loop);
# PORT (default 18085) and DB (default souq_bench, dropped and made again) to run beside
# another sitting. PGDB=NAME: a database to measure as it is (say, one examples/scalebench
# filled) instead of a fresh one.
# Build first: cargo build --release --bin souq --example loadgen
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}; B=${SOUQ:-$T/release/souq}; L=$T/release/examples/loadgen
NAME=${PGDB:-${DB:-souq_bench}}
if [ -z "${PGDB:-}" ]; then
  psql -h 127.0.0.1 -d postgres -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" ; psql -h 127.0.0.1 -d postgres -qc "CREATE DATABASE $NAME"
fi
export DATABASE_URL=postgres://root@127.0.0.1:5432/$NAME SOUQ_WS_FRAMES_PER_SEC=100000 SOUQ_WEBHOOK_ALLOW_PRIVATE=true RUST_LOG=souq=warn
# A given database may have the organisation from an earlier run.
$B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null 2>&1 || [ -n "${PGDB:-}" ]
SOUQ_BIND=127.0.0.1:${PORT:-18085} $B > ${TMPDIR:-/tmp}/souq-bench-pg.log 2>&1 &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT  # also when loadgen fails
sleep 1
PGP=$(pgrep -d, -f "postgres: .*$NAME" || true)
$L --nodes http://127.0.0.1:${PORT:-18085} --chats 200 --members 5 --rate ${RATE:-10} --seconds ${SECS:-20} ${EXTRA:-} --pids $P${PGP:+,$PGP}
kill $P; wait $P 2>/dev/null || true
