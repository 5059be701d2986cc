insert into ledger_external_ref_claim (tenant_id, external_ref_type, external_ref, idempotency_key, ledger_tx_id,
         request_fingerprint)
  select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[])
  on conflict (tenant_id, external_ref_type, external_ref) do update
     set ledger_tx_id = excluded.ledger_tx_id, updated_at = now()
     where ledger_external_ref_claim.idempotency_key = excluded.idempotency_key
       and ledger_external_ref_claim.ledger_tx_id is null;
