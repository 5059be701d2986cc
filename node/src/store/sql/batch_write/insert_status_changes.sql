insert into ledger_account_status_change (change_id, tenant_id, account_id, from_status, to_status, actor, reason_code, changed_at)
  select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[]);
