-- The database's own last line under the shard writer. The writer already refuses every
-- command that would post a transaction whose entries do not balance (core/src/recheck.rs,
-- core/src/validate.rs: balanced); this makes PostgreSQL refuse such rows too, so that a
-- bug in the writer cannot commit them either.
--
-- A statement that inserts journal entries must leave each transaction it inserts
-- entries for balanced in every currency. It is checked once per statement, not per row:
-- the trigger sees the statement's new rows as a transition table and groups them once.
-- The writer inserts all of a transaction's entries in one statement (the batch write,
-- node/src/sql/write_batch.sql), so each transaction's entries are all there. Rows
-- inserted straight into a partition bypass a trigger on the parent table; the ledger
-- writes through the parent only.
--
-- Safe on a populated ledger: creating a function and a statement trigger rewrites
-- nothing and holds its lock on ledger_entry for an instant.
create function ledger_require_balanced_entries() returns trigger
language plpgsql as $$
declare
    unbalanced record;
begin
    select e.ledger_tx_id, e.currency_code::text as currency_code into unbalanced
    from new_entries e
    group by e.ledger_tx_id, e.currency_code
    having sum(case when e.entry_side = 'DEBIT' then e.amount_minor else -e.amount_minor end) <> 0
    limit 1;
    if found then
        raise exception 'ledger: transaction % does not balance in %', unbalanced.ledger_tx_id, unbalanced.currency_code
            using errcode = 'check_violation', constraint = 'ledger_entry_balanced_per_currency';
    end if;
    return null;
end
$$;

create trigger trg_ledger_entry_balanced after insert on ledger_entry
    referencing new table as new_entries
    for each statement execute function ledger_require_balanced_entries();

-- The two checks of the batch write raise SQLSTATEs of their own (class LG, the ledger's),
-- so that the writer tells them apart by code, never by message text: LG001 the shard's
-- watermark moved (another writer committed), LG002 a key of an optimistically planned
-- batch is already recorded. The messages stay as they were.
create or replace function ledger_require_watermark(advanced bigint) returns void
language plpgsql as $$
begin
    if advanced <> 1 then
        raise exception 'ledger: the shard watermark moved: another writer committed to this shard'
            using errcode = 'LG001';
    end if;
end
$$;

create or replace function ledger_require_new_keys(optimistic boolean, recorded bigint, expected bigint) returns void
language plpgsql as $$
begin
    if optimistic and recorded <> expected then
        raise exception 'ledger: an idempotency key of the batch is already recorded'
            using errcode = 'LG002';
    end if;
end
$$;
