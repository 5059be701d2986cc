select t.ledger_tx_id, t.tx_type, t.occurred_at, t.posted_at, t.created_by, t.business_ref, t.external_ref_type,
         t.external_ref, t.reason_code, t.metadata, t.reverses_ledger_tx_id, r.reversal_ledger_tx_id
  from ledger_transaction t
  left join ledger_reversal r on r.tenant_id = t.tenant_id and r.reversed_ledger_tx_id = t.ledger_tx_id
  where t.ledger_tx_id = $1 and t.tenant_id = $2 and t.posted_at >= $3 and t.posted_at < $4;
