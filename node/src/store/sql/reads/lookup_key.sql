select status, ledger_tx_id, target_shard from ledger_idempotency where tenant_id = $1 and idempotency_key = $2;
