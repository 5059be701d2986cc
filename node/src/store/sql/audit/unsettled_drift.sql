select b.account_id
  from account_balance b
  left join (select e.account_id,
                    sum(e.amount_minor) filter (where e.entry_side = 'DEBIT') as debits,
                    sum(e.amount_minor) filter (where e.entry_side = 'CREDIT') as credits
             from ledger_saga_hold h join ledger_entry e on e.ledger_tx_id = h.saga_id
             group by e.account_id) u on u.account_id = b.account_id
  where b.unsettled_debits_minor <> coalesce(u.debits, 0) or b.unsettled_credits_minor <> coalesce(u.credits, 0)
  order by b.account_id limit 100;
