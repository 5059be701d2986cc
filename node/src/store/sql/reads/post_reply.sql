select posted_at from ledger_transaction
  where ledger_tx_id = $1 and tenant_id = $4 and posted_at >= $2 and posted_at < $3;
