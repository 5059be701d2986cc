#!/usr/bin/env bash
# Starts or stops a local cluster (one node, one router) in the background.
#   scripts/cluster.sh up [config]   (default cluster-config/local.toml)
#   scripts/cluster.sh down
#   scripts/cluster.sh status
source "$(dirname "$0")/env.sh"
cd "$ROOT"
CONFIG="${2:-${LEDGER_CONFIG:-cluster-config/local.toml}}"
BIN="$ROOT/target/debug"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  ensure_all
  say "building"
  cargo build -q --bins
  if running "$LOCAL/node.pid" || running "$LOCAL/router.pid"; then
    say "already running (scripts/cluster.sh down to stop)"; return 0
  fi
  say "starting node-0 and a router with $CONFIG"
  nohup "$BIN/ledger-node" --config "$CONFIG" --node node-0 >"$LOCAL/node.log" 2>&1 &
  echo $! >"$LOCAL/node.pid"
  for _ in $(seq 1 300); do grep -q "shard serving" "$LOCAL/node.log" 2>/dev/null && break; running "$LOCAL/node.pid" || break; sleep 0.1; done
  running "$LOCAL/node.pid" || { cat "$LOCAL/node.log" >&2; echo "the node did not start" >&2; exit 1; }
  nohup "$BIN/ledger-router" --config "$CONFIG" >"$LOCAL/router.log" 2>&1 &
  echo $! >"$LOCAL/router.pid"
  for _ in $(seq 1 100); do "$BIN/ledgerctl" --nats "$LEDGER_NATS_URL" topology >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN/ledgerctl" --nats "$LEDGER_NATS_URL" topology >/dev/null || { cat "$LOCAL/router.log" >&2; exit 1; }
  # every shard answers (the audit asks each one) before anyone is told the cluster is up
  for _ in $(seq 1 150); do
    "$BIN/ledgerctl" --nats "$LEDGER_NATS_URL" --json audit 2>/dev/null | grep -q '"unreachable_shards":\[\]' && break
    sleep 0.2
  done
  say "cluster up: NATS $LEDGER_NATS_URL, logs in .local/node.log and .local/router.log"
}

down() {
  for name in router node; do
    if running "$LOCAL/$name.pid"; then kill "$(cat "$LOCAL/$name.pid")"; fi
    rm -f "$LOCAL/$name.pid"
  done
  say "cluster stopped"
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status)
    for name in node router nats; do
      if running "$LOCAL/$name.pid"; then echo "$name: running (pid $(cat "$LOCAL/$name.pid"))"; else echo "$name: not started here"; fi
    done ;;
  *) echo "usage: $0 up|down|status [config]" >&2; exit 2 ;;
esac
