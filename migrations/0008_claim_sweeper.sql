-- Abandoned claims (router/src/claims.rs): a key claimed on its home shard for a request
-- decided on another shard, or an external reference claimed on its home shard, whose
-- router died before it recorded the outcome. Any router's recovery loop looks for such
-- claims once they are older than `limits.claim_abandon_after_ms` and settles them: the
-- request's outcome on its target shard if it was decided, otherwise the request is
-- marked abandoned there first (REQUEST_ABANDONED, stored under its key), so that a late
-- copy of it can never post after its claims were settled.

-- A reference's claim names the request that holds it, so that the sweeper can mark that
-- very request abandoned (older claims have none; a late copy of their request then
-- meets IDEMPOTENCY_CONFLICT, which posts nothing either).
alter table ledger_external_ref_claim add column request_fingerprint text;

-- The sweeper's scans: only claims still open are indexed. (A claim's row is updated
-- when its outcome is recorded; with the index that update cannot be heap-only, so a
-- request with a claim costs one more index entry. Requests whose key is homed with
-- their accounts make no claim and pay nothing.)
create index ix_ledger_idempotency_open_claims on ledger_idempotency (updated_at)
    where status = 'PROCESSING' and target_shard is not null;
create index ix_ledger_external_ref_claim_open on ledger_external_ref_claim (updated_at)
    where ledger_tx_id is null;
