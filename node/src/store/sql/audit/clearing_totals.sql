select a.tenant_id, a.currency_code::text, sum(b.balance_minor)::int8
  from ledger_account a join account_balance b on b.account_id = a.account_id
  where a.account_code like '#clearing:%'
  group by a.tenant_id, a.currency_code order by 1, 2;
