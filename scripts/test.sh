#!/usr/bin/env bash
# The README's second command: installs what is missing, starts PostgreSQL and NATS if
# they are not running, and runs every test (unit, property, end-to-end).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ensure_all
say "dropping databases left behind by earlier test runs"
psql "$LEDGER_PG_URL/postgres" -tAc "select datname from pg_database where datname like 'ledger_test_%' or datname like 'ledger_proc_%'" |
  while read -r db; do [ -n "$db" ] && psql "$LEDGER_PG_URL/postgres" -qc "drop database if exists \"$db\" with (force)"; done
say "running the tests (nats-server: $NATS_SERVER_BIN)"
# The foundation tests (docs/PROTOCOL.md's promises) run three times: on one shard; on four,
# where most of their transfers cross shards and run as sagas; and on four split over two
# nodes with the router running beside one of them (`ledger-router --node`), reaching
# that node's shards in-process and the other's over NATS.
FOUNDATION_MODULES=(concurrency database errors idempotency reversal service)
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
  say "the foundation tests again, on 4 shards"
  filter="test(/^($(IFS='|'; echo "${FOUNDATION_MODULES[*]}"))::/)"
  LEDGER_TEST_SHARDS=4 cargo nextest run -p ledger-tests --no-fail-fast -E "$filter" "$@" || status=$?
  say "the foundation tests again, on 4 shards over 2 nodes, the router beside one of them"
  LEDGER_TEST_SHARDS=4 LEDGER_TEST_ROUTER_BESIDE=1 cargo nextest run -p ledger-tests --no-fail-fast -E "$filter" "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
  say "the foundation tests again, on 4 shards"
  LEDGER_TEST_SHARDS=4 cargo test -p ledger-tests --test e2e --no-fail-fast "$@" -- "${FOUNDATION_MODULES[@]/%/::}" || status=$?
  say "the foundation tests again, on 4 shards over 2 nodes, the router beside one of them"
  LEDGER_TEST_SHARDS=4 LEDGER_TEST_ROUTER_BESIDE=1 cargo test -p ledger-tests --test e2e --no-fail-fast "$@" -- "${FOUNDATION_MODULES[@]/%/::}" || status=$?
fi
exit $status
