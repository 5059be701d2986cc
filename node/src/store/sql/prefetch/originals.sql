select t.ledger_tx_id, t.tenant_id, t.tx_type, t.business_ref, r.reversal_ledger_tx_id, h.saga_id is not null
  from ledger_transaction t
  left join ledger_reversal r on r.tenant_id = t.tenant_id and r.reversed_ledger_tx_id = t.ledger_tx_id
  left join ledger_saga_hold h on h.saga_id = t.ledger_tx_id
  where t.ledger_tx_id = any($1);
