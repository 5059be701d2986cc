select tenant_id, idempotency_key, request_fingerprint, target_shard from ledger_idempotency
  where status = 'PROCESSING' and target_shard is not null
    and updated_at < now() - make_interval(secs => $1 / 1000.0)
  order by updated_at limit $2;
