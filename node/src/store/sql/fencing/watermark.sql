select last_commit_seq, case when last_posted_at = '-infinity' then null else last_posted_at end as last_posted_at,
         last_event_seq
  from ledger_shard;
