with sums as (
      select account_id,
             coalesce(sum(amount_minor) filter (where entry_side = 'DEBIT'), 0)::int8 as debits,
             coalesce(sum(amount_minor) filter (where entry_side = 'CREDIT'), 0)::int8 as credits,
             count(*) as entries
      from ledger_entry group by account_id
  ), last_entry as (
      select distinct on (account_id) account_id, ledger_entry_id
      from ledger_entry order by account_id, commit_seq desc, entry_seq desc
  ), held as (
      select e.account_id,
             coalesce(sum(e.amount_minor) filter (where e.entry_side = 'DEBIT'), 0)::int8 as debits,
             coalesce(sum(e.amount_minor) filter (where e.entry_side = 'CREDIT'), 0)::int8 as credits
      from ledger_saga_hold h join ledger_entry e on e.ledger_tx_id = h.saga_id
      group by e.account_id
  ), wanted as (
      select a.account_id,
             coalesce(s.debits, 0) as debits, coalesce(s.credits, 0) as credits,
             coalesce(s.entries, 0) as entries,
             case when a.account_type in ('ASSET', 'EXPENSE') then coalesce(s.debits, 0) - coalesce(s.credits, 0)
                  else coalesce(s.credits, 0) - coalesce(s.debits, 0) end as balance,
             l.ledger_entry_id as last_entry,
             coalesce(h.debits, 0) as held_debits, coalesce(h.credits, 0) as held_credits
      from ledger_account a
      left join sums s on s.account_id = a.account_id
      left join last_entry l on l.account_id = a.account_id
      left join held h on h.account_id = a.account_id
  )
  update account_balance b
  set debits_minor = w.debits, credits_minor = w.credits, balance_minor = w.balance, version = w.entries,
      last_entry_id = w.last_entry, unsettled_debits_minor = w.held_debits,
      unsettled_credits_minor = w.held_credits, updated_at = now()
  from wanted w
  where b.account_id = w.account_id
    and (b.debits_minor, b.credits_minor, b.balance_minor, b.version, b.unsettled_debits_minor,
         b.unsettled_credits_minor, b.last_entry_id)
        is distinct from (w.debits, w.credits, w.balance, w.entries, w.held_debits, w.held_credits, w.last_entry)
  returning b.account_id;
