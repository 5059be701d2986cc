-- One batch of postings in ONE statement (one round trip, its own transaction unless the
-- caller opened one): the watermark guard, journal, entries, idempotency records,
-- external references, reversals, balances, outbox, saga logs and saga holds.
-- Each line that starts with "--@" names a part. store::batch_statement keeps the guard and the
-- final select and only the parts whose rows the batch has: every data-modifying CTE
-- costs its table's and indexes' set-up on each execution even when it writes nothing,
-- and most batches are plain postings.
-- Every data-modifying CTE runs exactly once; if the guard fails, the final select
-- raises and the whole statement rolls back. With $62 (optimistic) the batch was planned
-- as if all its keys were new: any key already recorded makes the statement raise too.
--@ guard
guard as (
    update ledger_shard set last_commit_seq = $2, last_posted_at = coalesce($3, last_posted_at), last_event_seq = $65
    where last_commit_seq = $1
    returning 1
)
--@ transactions
transactions as (
    insert into ledger_transaction (ledger_tx_id, tenant_id, commit_seq, tx_type, idempotency_key, request_fingerprint,
            external_ref_type, external_ref, business_ref, occurred_at, posted_at, created_by, reason_code, metadata,
            reverses_ledger_tx_id)
    select id, tenant, seq, kind, key, fp, ref_type, ref, business_ref, occurred, posted, actor, reason, metadata::jsonb, reverses
    from unnest($4::uuid[], $5::uuid[], $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::timestamptz[], $14::timestamptz[], $15::text[], $16::text[], $17::text[], $18::uuid[])
         as u(id, tenant, seq, kind, key, fp, ref_type, ref, business_ref, occurred, posted, actor, reason, metadata, reverses)
)
--@ entries
entries as (
    insert into ledger_entry (ledger_entry_id, ledger_tx_id, tenant_id, account_id, entry_side, amount_minor, currency_code,
            entry_seq, balance_after_minor, commit_seq, effective_at, posted_at)
    select * from unnest($19::uuid[], $20::uuid[], $21::uuid[], $22::uuid[], $23::text[], $24::int8[], $25::text[], $26::int4[],
                         $27::int8[], $28::int8[], $29::timestamptz[], $30::timestamptz[])
)
--@ released_keys
released_keys as (
    -- a claim released by a refusal that consumes no key leaves no row behind
    delete from ledger_idempotency i
    using unnest($31::uuid[], $32::text[], $34::text[]) as u(tenant, key, status)
    where u.status = 'FAILED_RETRYABLE' and i.tenant_id = u.tenant and i.idempotency_key = u.key
      and i.status in ('PROCESSING', 'FAILED_RETRYABLE')
)
--@ keys
keys as (
    -- the where keeps a final record final even if a late completion were to reach it
    insert into ledger_idempotency (tenant_id, idempotency_key, request_fingerprint, status, target_shard, ledger_tx_id,
            response_code, response_body, created_at, updated_at, expires_at)
    select tenant, key, fp, status, target, tx, nullif(code, 0), body::jsonb, created, created, expires
    from unnest($31::uuid[], $32::text[], $33::text[], $34::text[], $35::int4[], $36::uuid[], $37::int4[], $38::text[],
                $39::timestamptz[], $40::timestamptz[])
         as u(tenant, key, fp, status, target, tx, code, body, created, expires)
    where status <> 'FAILED_RETRYABLE'
    on conflict (tenant_id, idempotency_key) do update
       set request_fingerprint = excluded.request_fingerprint, status = excluded.status,
           target_shard = excluded.target_shard, ledger_tx_id = excluded.ledger_tx_id,
           response_code = excluded.response_code, response_body = excluded.response_body,
           updated_at = excluded.updated_at, expires_at = excluded.expires_at
       where not $62 and ledger_idempotency.status in ('PROCESSING', 'FAILED_RETRYABLE')
    returning 1
)
--@ balances
balances as (
    update account_balance b
    set balance_minor = u.balance, debits_minor = u.debits, credits_minor = u.credits, version = u.version,
        last_entry_id = u.last_entry, unsettled_debits_minor = u.unsettled_debits,
        unsettled_credits_minor = u.unsettled_credits, updated_at = coalesce($47, now())
    from unnest($41::uuid[], $42::int8[], $43::int8[], $44::int8[], $45::int8[], $46::uuid[], $80::int8[], $81::int8[])
         as u(id, balance, debits, credits, version, last_entry, unsettled_debits, unsettled_credits)
    where b.account_id = u.id
)
--@ outbox
outbox as (
    insert into ledger_outbox (outbox_id, tenant_id, aggregate_type, aggregate_id, event_type, payload, created_at, event_seq)
    select id, tenant, agg_type, agg_id, ev_type, payload::jsonb, created, seq
    from unnest($48::uuid[], $49::uuid[], $50::text[], $51::uuid[], $52::text[], $53::text[], $54::timestamptz[], $64::int8[])
         as u(id, tenant, agg_type, agg_id, ev_type, payload, created, seq)
)
--@ external_refs
external_refs as (
    insert into ledger_external_ref (tenant_id, external_ref_type, external_ref, ledger_tx_id)
    select * from unnest($55::uuid[], $56::text[], $57::text[], $58::uuid[])
)
--@ reversals
reversals as (
    insert into ledger_reversal (tenant_id, reversed_ledger_tx_id, reversal_ledger_tx_id)
    select * from unnest($59::uuid[], $60::uuid[], $61::uuid[])
)
--@ sagas
sagas as (
    -- saga logs whose home is this shard: opened, moved forward, or claimed for reversal
    insert into ledger_saga (saga_id, tenant_id, idempotency_key, request_fingerprint, saga_kind, reverses_saga_id, state,
            header, steps, failure, reply, reversed_by_saga_id, created_at, updated_at)
    select id, tenant, key, fp, kind, reverses, state, header::jsonb, steps::jsonb, failure::jsonb, reply::jsonb, reversed_by,
           created, updated
    from unnest($66::uuid[], $67::uuid[], $68::text[], $69::text[], $70::text[], $71::uuid[], $72::text[], $73::text[],
                $74::text[], $75::text[], $76::text[], $77::uuid[], $78::timestamptz[], $79::timestamptz[])
         as u(id, tenant, key, fp, kind, reverses, state, header, steps, failure, reply, reversed_by, created, updated)
    on conflict (saga_id) do update
       set state = excluded.state, steps = excluded.steps, failure = excluded.failure, reply = excluded.reply,
           reversed_by_saga_id = excluded.reversed_by_saga_id, updated_at = excluded.updated_at
)
--@ holds_opened
holds_opened as (
    -- saga legs posted held (migration 0007)
    insert into ledger_saga_hold (saga_id, tenant_id, step, created_at)
    select * from unnest($82::uuid[], $83::uuid[], $84::int4[], $85::timestamptz[])
)
--@ holds_settled
holds_settled as (
    -- held legs released or compensated
    delete from ledger_saga_hold where saga_id = any($86::uuid[])
)
--@ final
select ledger_require_watermark((select count(*) from guard)),
       ledger_require_new_keys($62, (select count(*) from keys), $63)
