#!/usr/bin/env bash
# The README's first command: installs what is missing, starts PostgreSQL and NATS if
# they are not running, builds, starts a local cluster and moves some money with it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
"$ROOT/scripts/cluster.sh" up "${1:-cluster-config/local.toml}"

TENANT="$(python3 -c 'import uuid; print(uuid.uuid4())')"
ctl() { "$ROOT/target/debug/ledgerctl" --nats "$LEDGER_NATS_URL" --tenant "$TENANT" "$@"; }
step() { printf '\n\033[1;34m## %s\033[0m\n' "$*"; }
step_cmd() { printf '\033[2m$ ledgerctl %s\033[0m\n' "$*"; }
run() { step_cmd "$*"; ctl "$@"; }

step "A fresh tenant: $TENANT"

step "The cluster: shards, the node that owns them, the hash ring"
run topology

step "Create accounts (a bank account, two customer wallets, a merchant)"
run create-account bank:settlement --type ASSET --currency IDR
run create-account wallet:alice --type LIABILITY --currency IDR --metadata '{"owner":"alice"}'
run create-account wallet:bob --type LIABILITY --currency IDR
run create-account merchant:77 --type LIABILITY --currency IDR

step "Alice tops up Rp 500.000,00 (money arrives at the bank, her wallet is credited)"
run transfer bank:settlement wallet:alice 50000000 IDR --key topup-alice-1 --type TOPUP

step "Alice pays merchant 77 Rp 125.000,00"
run transfer wallet:alice merchant:77 12500000 IDR --key pay-8812 --type PAYMENT_CAPTURED \
  --external-ref ch_8812 --external-ref-type processor_x --business-ref order-42

step "The client times out and retries with the same key: the stored reply comes back, nothing posts twice"
run transfer wallet:alice merchant:77 12500000 IDR --key pay-8812 --type PAYMENT_CAPTURED \
  --external-ref ch_8812 --external-ref-type processor_x --business-ref order-42

step "Alice sends Bob Rp 50.000,00"
run transfer wallet:alice wallet:bob 5000000 IDR --key p2p-1

step "The payment was a duplicate: reverse it (corrections are reversals, never edits)"
PAYMENT_ID="$(ctl --json tx --key pay-8812 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ledger_tx_id"])')"
run reverse "$PAYMENT_ID" --key reverse-pay-8812 --actor ops:alice --reason DUPLICATE
run tx "$PAYMENT_ID"

step "Bob tries to spend Rp 1.000.000,00 he does not have: refused, nothing written"
if run transfer wallet:bob merchant:77 100000000 IDR --key bob-overdraft; then
  echo "the overdraft was NOT refused" >&2; exit 1
fi

step "A split payment (Alice and Bob pay the merchant together) that Bob cannot afford: refused whole"
echo "(accounts live on different shards: such a payment runs as a saga, one leg per shard; if"
echo " Alice's leg posted before Bob's was refused, a SAGA_COMPENSATION puts her money back)"
if run post '{"idempotency_key":"split-1","type":"PAYMENT_CAPTURED","actor":"demo","entries":[
  {"account_code":"wallet:alice","side":"DEBIT","amount_minor":1000000,"currency":"IDR"},
  {"account_code":"wallet:bob","side":"DEBIT","amount_minor":90000000,"currency":"IDR"},
  {"account_code":"merchant:77","side":"CREDIT","amount_minor":91000000,"currency":"IDR"}]}'; then
  echo "the split payment was NOT refused" >&2; exit 1
fi

step "Alice's statement: every entry with the balance right after it"
run statement wallet:alice

step "Balances"
for code in bank:settlement wallet:alice wallet:bob merchant:77; do run account "$code"; done

step "The audit: projections match the journal, debits = credits, clearing accounts settled"
run audit

printf '\n\033[1mThe cluster is still running on %s. Try: target/debug/ledgerctl --tenant %s account wallet:alice\nStop it with: make down\033[0m\n' "$LEDGER_NATS_URL" "$TENANT"
