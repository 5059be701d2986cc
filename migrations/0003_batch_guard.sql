-- Raises unless the shard watermark advanced by exactly one row: the fence check of the
-- one-statement batch write (node/src/sql/write_batch.sql), which must abort as a whole.
create function ledger_require_watermark(advanced bigint) returns void
language plpgsql as $$
begin
    if advanced <> 1 then
        raise exception 'ledger: the shard watermark moved: another writer committed to this shard'
            using errcode = 'lock_not_available';
    end if;
end
$$;
