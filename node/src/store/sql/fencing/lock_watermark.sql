select last_commit_seq from ledger_shard for update;
