-- The naive PostgreSQL ledger, as a team without this project would write it: one
-- transfer per database transaction, both balance rows locked in id order with
-- SELECT ... FOR UPDATE, a conditional debit, inserts of the transaction and its two
-- entries, updates of both balances. Random v4 uuids and foreign keys, durability on.
drop table if exists naive_entry, naive_transaction, naive_account cascade;
create extension if not exists pgcrypto;

create table naive_account (
    account_id bigint primary key,
    currency_code char(3) not null,
    balance_minor bigint not null check (balance_minor >= 0),
    version bigint not null default 0,
    updated_at timestamptz not null default now()
);

create table naive_transaction (
    ledger_tx_id uuid primary key default gen_random_uuid(),
    idempotency_key text not null unique,
    tx_type text not null,
    posted_at timestamptz not null default now()
);

create table naive_entry (
    ledger_entry_id uuid primary key default gen_random_uuid(),
    ledger_tx_id uuid not null references naive_transaction (ledger_tx_id),
    account_id bigint not null references naive_account (account_id),
    entry_side text not null check (entry_side in ('DEBIT', 'CREDIT')),
    amount_minor bigint not null check (amount_minor > 0),
    created_at timestamptz not null default now()
);
create index naive_entry_account on naive_entry (account_id, created_at);

insert into naive_account (account_id, currency_code, balance_minor)
select g, 'USD', 1000000000000 from generate_series(1, :accounts) g;
analyze;
