insert into ledger_account (account_id, tenant_id, account_code, account_type, currency_code, allow_negative, metadata, created_at)
  select id, tenant, code, kind, currency, allow_negative, metadata::jsonb, created
  from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::text[], $8::timestamptz[])
       as u(id, tenant, code, kind, currency, allow_negative, metadata, created);
