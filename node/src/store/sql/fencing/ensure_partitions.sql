select ledger_ensure_partitions($1);
