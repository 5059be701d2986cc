-- Cross-shard transactions as sagas (core/src/saga.rs).
--
-- The saga log lives on the home shard of the request's idempotency key and is written
-- in the same transaction that claims the key (status PROCESSING, ledger_tx_id = the
-- saga id), before the first leg. Command-layer state: its state and steps move forward
-- only (the shard writer refuses a record that would move them back), and a terminal
-- saga changes no more except its reversal claim.
--
-- Each leg is an ordinary journal row on its shard that carries the saga id as its
-- ledger_tx_id, balanced by the shard's clearing account; its step is idempotent by the
-- shard's own ledger_idempotency row under an internal key per (saga id, step).
create table ledger_saga (
    saga_id uuid primary key,
    tenant_id uuid not null,
    idempotency_key text not null,
    request_fingerprint text not null,
    saga_kind text not null,
    -- the saga transaction this one reverses (saga_kind = 'REVERSE')
    reverses_saga_id uuid,
    state text not null,
    header jsonb not null,
    -- per step: shard, action, status, attempts, compensation, updated_at
    steps jsonb not null,
    failure jsonb,
    reply jsonb,
    reversed_by_saga_id uuid,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint ck_ledger_saga_kind check (saga_kind in ('POST', 'REVERSE')),
    constraint ck_ledger_saga_state check (state in ('RUNNING', 'COMPENSATING', 'POSTED', 'COMPENSATED')),
    constraint ck_ledger_saga_reply check (state not in ('POSTED', 'COMPENSATED') or reply is not null)
);

-- Recovery and the audit look for sagas that are not finished.
create index ix_ledger_saga_in_flight on ledger_saga (updated_at) where state in ('RUNNING', 'COMPENSATING');
