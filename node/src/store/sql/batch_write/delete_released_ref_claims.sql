delete from ledger_external_ref_claim c
  using unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) as u(tenant, ref_type, ref, key)
  where c.tenant_id = u.tenant and c.external_ref_type = u.ref_type and c.external_ref = u.ref
    and c.idempotency_key = u.key and c.ledger_tx_id is null;
