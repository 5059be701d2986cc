update ledger_account set status = $2,
         closed_at = case when $2 = 'CLOSED' then $3 else null end
  where account_id = $1;
