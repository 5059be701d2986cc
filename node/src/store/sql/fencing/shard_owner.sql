select shard_id from ledger_shard;
