select e.ledger_entry_id, e.ledger_tx_id, t.tx_type, e.entry_side, e.amount_minor, e.currency_code,
         e.balance_after_minor, e.effective_at, e.posted_at, t.business_ref, t.external_ref_type, t.external_ref,
         e.commit_seq
  from ledger_entry e
  join ledger_transaction t on t.ledger_tx_id = e.ledger_tx_id and t.posted_at = e.posted_at
  where e.account_id = $1 and e.tenant_id = $2 and e.commit_seq > $3
    and ($4::timestamptz is null or e.posted_at >= $4)
    and ($5::timestamptz is null or e.posted_at < $5)
  order by e.commit_seq
  limit $6;
