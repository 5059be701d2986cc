select distinct ledger_tx_id from (
      select ledger_tx_id from ledger_entry group by ledger_tx_id, currency_code
      having sum(case when entry_side = 'DEBIT' then amount_minor else -amount_minor end) <> 0
  ) u order by ledger_tx_id limit 100;
