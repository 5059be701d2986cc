select tenant_id, external_ref_type, external_ref, idempotency_key, request_fingerprint
  from ledger_external_ref_claim
  where ledger_tx_id is null and updated_at < now() - make_interval(secs => $1 / 1000.0)
  order by updated_at limit $2;
