select ledger_entry_id, account_id, entry_side, amount_minor, currency_code, entry_seq, balance_after_minor
  from ledger_entry where ledger_tx_id = $1 and posted_at >= $2 and posted_at < $3 order by entry_seq;
