select ledger_tx_id, account_id, entry_side, amount_minor, currency_code, entry_seq
  from ledger_entry where ledger_tx_id = any($1) order by ledger_tx_id, entry_seq;
