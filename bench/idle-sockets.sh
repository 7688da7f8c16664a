#!/usr/bin/env bash
# Server memory per idle socket: N sockets (default 19000) that only stay connected, to souq
# (1 node, SQLite) as N distinct people (customers with a chat each), then as devices of 200
# customers (--devices), and to the bare ceiling server. Prints loadgen's JSON line for each.
# ONLY (people, devices or ceiling) runs one of them; PORT (souq's, default 18083; the
# ceiling's is 1010 above) and TMPDIR (the database and the log) to run beside another sitting.
# Build first: cargo build --release --bin souq --example loadgen --example ceiling
set -e
T=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}
B=${SOUQ:-$T/release/souq}; L=$T/release/examples/loadgen; C=$T/release/examples/ceiling
N=${N:-19000}
ulimit -n 20000
export DATABASE_URL=sqlite://${TMPDIR:-/tmp}/souq-idle.db RUST_LOG=souq=warn

souq() {
  rm -f ${TMPDIR:-/tmp}/souq-idle.db*
  $B org create --email owner@acme.test --password 'correct horse' --subdomain acme >/dev/null
  SOUQ_BIND=127.0.0.1:${PORT:-18083} $B > ${TMPDIR:-/tmp}/souq-idle-node.log 2>&1 &
  P=$!
  trap 'kill $P 2>/dev/null || true' EXIT  # also when loadgen fails
  sleep 1
  $L --nodes http://127.0.0.1:${PORT:-18083} --chats 200 --idle $N --seconds 5 --pids $P "$@"
  kill $P; wait $P 2>/dev/null || true
}

case ${ONLY:-people} in people) souq ;; esac
case ${ONLY:-devices} in devices) souq --devices ;; esac
case ${ONLY:-ceiling} in ceiling)
  $C 127.0.0.1:$((${PORT:-18083} + 1010)) 2>/dev/null &
  P=$!
  sleep 0.5
  $L --ceiling --nodes http://127.0.0.1:$((${PORT:-18083} + 1010)) --chats 200 --idle $N --seconds 5 --pids $P
  kill $P; wait $P 2>/dev/null || true ;;
esac
