select saga_id, tenant_id, idempotency_key, request_fingerprint, saga_kind, reverses_saga_id, state, header,
       steps, failure, reply, reversed_by_saga_id, created_at, updated_at
  from ledger_saga
  where state in ('RUNNING', 'COMPENSATING') and updated_at < now() - make_interval(secs => $1::float8 / 1000)
  order by updated_at limit $2;
