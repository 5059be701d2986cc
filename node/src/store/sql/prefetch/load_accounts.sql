select a.account_id, a.tenant_id, a.account_type, a.currency_code, a.status, a.allow_negative, a.metadata,
         b.balance_minor, b.debits_minor, b.credits_minor, b.unsettled_debits_minor, b.unsettled_credits_minor,
         b.version, b.last_entry_id
  from ledger_account a join account_balance b on b.account_id = a.account_id
  where a.account_id = any($1);
