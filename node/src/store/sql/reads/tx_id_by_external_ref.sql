select ledger_tx_id from ledger_external_ref where tenant_id = $1 and external_ref_type = $2 and external_ref = $3
  union all
  select ledger_tx_id from ledger_external_ref_claim
  where tenant_id = $1 and external_ref_type = $2 and external_ref = $3 and ledger_tx_id is not null
  limit 1;
