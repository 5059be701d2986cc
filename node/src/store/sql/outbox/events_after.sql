select event_seq, outbox_id, tenant_id, event_type, aggregate_type, aggregate_id, payload::text
  from ledger_outbox where event_seq > $1 order by event_seq limit $2;
