#!/usr/bin/env bash
# The README's second command: installs what is missing, starts PostgreSQL and NATS if
# they are not running, and runs every test (unit, property, end-to-end).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ensure_all
say "dropping databases left behind by earlier test runs"
psql "$LEDGER_PG_URL/postgres" -tAc "select datname from pg_database where datname like 'ledger_test_%'" |
  while read -r db; do [ -n "$db" ] && psql "$LEDGER_PG_URL/postgres" -qc "drop database if exists \"$db\" with (force)"; done
say "running the tests (nats-server: $NATS_SERVER_BIN)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
