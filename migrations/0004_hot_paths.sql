-- Hot-path tuning.
-- Balance rows are updated in place by every batch: leave room on each page so the
-- updates stay heap-only (HOT) and do not touch the primary key index.
alter table account_balance set (fillfactor = 70);

-- The optimistic idempotency check of the one-statement batch write: the writer plans a
-- batch as if its keys were new and lets the statement prove it; if any key is already
-- recorded, the statement aborts whole and the writer re-plans with the records loaded.
create function ledger_require_new_keys(optimistic boolean, recorded bigint, expected bigint) returns void
language plpgsql as $$
begin
    if optimistic and recorded <> expected then
        raise exception 'ledger: an idempotency key of the batch is already recorded'
            using errcode = 'unique_violation';
    end if;
end
$$;
