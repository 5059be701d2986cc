insert into ledger_shard (shard_id) values ($1) on conflict (singleton) do nothing;
