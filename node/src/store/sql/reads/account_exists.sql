select exists(select 1 from ledger_account where account_id = $1 and tenant_id = $2);
