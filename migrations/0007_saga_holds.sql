-- Held saga legs: every leg of a saga but the last is posted *held* (core/src/account.rs,
-- `Unsettled`). Its entries are ordinary journal entries and count in the balance at once,
-- but until the saga has posted everywhere they stay unsettled on their accounts: money a
-- held leg brought in cannot be spent, and an account with unsettled amounts cannot be
-- closed. So the leg's compensation, if the saga turns back, can always post.
--
-- A release (the saga posted) or the compensation (it turned back) settles the leg. The
-- hold row makes that happen once: it is inserted with the leg and deleted when the leg
-- settles. The unsettled columns are a projection of the hold rows and their legs'
-- entries; the audit checks one against the other, and that no hold outlives its saga.

alter table account_balance
    add column unsettled_debits_minor bigint not null default 0,
    add column unsettled_credits_minor bigint not null default 0,
    add constraint ck_account_balance_unsettled check (unsettled_debits_minor >= 0 and unsettled_credits_minor >= 0);

-- One leg per saga on a shard: the leg's journal row carries the saga id.
create table ledger_saga_hold (
    saga_id uuid primary key,
    tenant_id uuid not null,
    step integer not null,
    created_at timestamptz not null
);
