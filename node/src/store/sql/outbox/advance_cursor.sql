update ledger_outbox_cursor set last_published_event_seq = $1, updated_at = now()
  where last_published_event_seq < $1;
