-- Cluster-wide uniqueness of idempotency keys and external references.
--
-- A key's home shard is hash(tenant, key) on the ring; an external reference's home is
-- hash(tenant, type, ref). When a request's accounts live on another shard (the target),
-- the home records a claim first: the key as PROCESSING with the target shard, the
-- reference as a pending claim of the key. The target decides and posts exactly once
-- (its own ledger_idempotency row guards it); the home then records the outcome.

alter table ledger_idempotency add column target_shard integer;

-- Claims of references whose home is this shard, for requests decided on other shards.
-- Command-layer state: a pending claim is deleted when its request is refused; a bound
-- claim is final.
create table ledger_external_ref_claim (
    tenant_id uuid not null,
    external_ref_type text not null,
    external_ref text not null,
    idempotency_key text not null,
    ledger_tx_id uuid,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint pk_ledger_external_ref_claim primary key (tenant_id, external_ref_type, external_ref)
);
