with wanted as (select * from unnest($1::uuid[], $2::text[], $3::text[]) as k(tenant_id, ref_type, ref))
  select x.tenant_id, x.external_ref_type, x.external_ref, null::text as claimed_by, x.ledger_tx_id
  from ledger_external_ref x
  join wanted k on x.tenant_id = k.tenant_id and x.external_ref_type = k.ref_type and x.external_ref = k.ref
  union all
  select c.tenant_id, c.external_ref_type, c.external_ref, c.idempotency_key, c.ledger_tx_id
  from ledger_external_ref_claim c
  join wanted k on c.tenant_id = k.tenant_id and c.external_ref_type = k.ref_type and c.external_ref = k.ref;
