select i.tenant_id, i.idempotency_key, i.request_fingerprint, i.status, i.ledger_tx_id, i.response_code, i.response_body,
         i.target_shard
  from ledger_idempotency i
  join unnest($1::uuid[], $2::text[]) as k(tenant_id, idempotency_key)
    on i.tenant_id = k.tenant_id and i.idempotency_key = k.idempotency_key;
