insert into account_balance (account_id, tenant_id, currency_code, updated_at)
  select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]);
