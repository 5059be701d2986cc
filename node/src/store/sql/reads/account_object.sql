select a.account_id, a.tenant_id, a.account_code, a.account_type, a.currency_code, a.status, a.allow_negative,
         a.metadata, a.created_at, a.closed_at,
         b.balance_minor, b.debits_minor, b.credits_minor, b.version, b.updated_at,
         case when a.account_type in ('ASSET', 'EXPENSE') then b.unsettled_debits_minor
              else b.unsettled_credits_minor end as held_minor
  from ledger_account a join account_balance b on b.account_id = a.account_id
  where a.account_id = $1 and a.tenant_id = $2;
