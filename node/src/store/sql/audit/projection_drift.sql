select b.account_id
  from account_balance b
  join ledger_account a on a.account_id = b.account_id
  left join (select account_id,
                    sum(amount_minor) filter (where entry_side = 'DEBIT') as debits,
                    sum(amount_minor) filter (where entry_side = 'CREDIT') as credits,
                    count(*) as entries
             from ledger_entry group by account_id) e on e.account_id = b.account_id
  where b.debits_minor <> coalesce(e.debits, 0) or b.credits_minor <> coalesce(e.credits, 0)
     or b.version <> coalesce(e.entries, 0)
     or b.balance_minor <> case when a.account_type in ('ASSET', 'EXPENSE')
                                then coalesce(e.debits, 0) - coalesce(e.credits, 0)
                                else coalesce(e.credits, 0) - coalesce(e.debits, 0) end
  order by b.account_id limit 100;
