select saga_id, tenant_id, idempotency_key, request_fingerprint, saga_kind, reverses_saga_id, state, header,
       steps, failure, reply, reversed_by_saga_id, created_at, updated_at
  from ledger_saga where saga_id = any($1);
