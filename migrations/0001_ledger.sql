-- The ledger schema of one shard. Every shard database has exactly this schema; a
-- shard holds the accounts the hash ring places on it, their journal and entries, and
-- the idempotency records and external-reference claims whose home it is.
--
-- Designed for what comes later (ARCHITECTURE.md, "Designed in from the first
-- migration"): tenant_id on every tenant-owned row; journal and entries range-partitioned
-- by month on posted_at with keys that include it; time-ordered (v7) ids; a per-shard,
-- gap-free commit_seq; pending columns next to posted ones; the outbox beside the facts.
--
-- Uniqueness that must hold across partitions (idempotency key, external reference,
-- "reversed at most once") lives in small unpartitioned claim tables, because
-- PostgreSQL requires a unique index on a partitioned table to include the partition key.
-- Entries carry no foreign keys: the shard's single writer validates every reference
-- before it writes, and FK checks would double the row work of the hot path
-- (PERF-NOTES.md). The audit checks the references after the fact.

create table currency (
    currency_code char(3) primary key,
    minor_units smallint not null,
    constraint ck_currency_code check (currency_code ~ '^[A-Z]{3}$'),
    constraint ck_currency_minor_units check (minor_units between 0 and 4)
);

insert into currency (currency_code, minor_units) values
    ('AED', 2),
    ('AFN', 2),
    ('ALL', 2),
    ('AMD', 2),
    ('AOA', 2),
    ('ARS', 2),
    ('AUD', 2),
    ('AWG', 2),
    ('AZN', 2),
    ('BAM', 2),
    ('BBD', 2),
    ('BDT', 2),
    ('BGN', 2),
    ('BHD', 3),
    ('BIF', 0),
    ('BMD', 2),
    ('BND', 2),
    ('BOB', 2),
    ('BRL', 2),
    ('BSD', 2),
    ('BTN', 2),
    ('BWP', 2),
    ('BYN', 2),
    ('BZD', 2),
    ('CAD', 2),
    ('CDF', 2),
    ('CHF', 2),
    ('CLP', 0),
    ('CNY', 2),
    ('COP', 2),
    ('CRC', 2),
    ('CUP', 2),
    ('CVE', 2),
    ('CZK', 2),
    ('DJF', 0),
    ('DKK', 2),
    ('DOP', 2),
    ('DZD', 2),
    ('EGP', 2),
    ('ERN', 2),
    ('ETB', 2),
    ('EUR', 2),
    ('FJD', 2),
    ('FKP', 2),
    ('GBP', 2),
    ('GEL', 2),
    ('GHS', 2),
    ('GIP', 2),
    ('GMD', 2),
    ('GNF', 0),
    ('GTQ', 2),
    ('GYD', 2),
    ('HKD', 2),
    ('HNL', 2),
    ('HTG', 2),
    ('HUF', 2),
    ('IDR', 2),
    ('ILS', 2),
    ('INR', 2),
    ('IQD', 3),
    ('IRR', 2),
    ('ISK', 0),
    ('JMD', 2),
    ('JOD', 3),
    ('JPY', 0),
    ('KES', 2),
    ('KGS', 2),
    ('KHR', 2),
    ('KMF', 0),
    ('KPW', 2),
    ('KRW', 0),
    ('KWD', 3),
    ('KYD', 2),
    ('KZT', 2),
    ('LAK', 2),
    ('LBP', 2),
    ('LKR', 2),
    ('LRD', 2),
    ('LSL', 2),
    ('LYD', 3),
    ('MAD', 2),
    ('MDL', 2),
    ('MGA', 2),
    ('MKD', 2),
    ('MMK', 2),
    ('MNT', 2),
    ('MOP', 2),
    ('MRU', 2),
    ('MUR', 2),
    ('MVR', 2),
    ('MWK', 2),
    ('MXN', 2),
    ('MYR', 2),
    ('MZN', 2),
    ('NAD', 2),
    ('NGN', 2),
    ('NIO', 2),
    ('NOK', 2),
    ('NPR', 2),
    ('NZD', 2),
    ('OMR', 3),
    ('PAB', 2),
    ('PEN', 2),
    ('PGK', 2),
    ('PHP', 2),
    ('PKR', 2),
    ('PLN', 2),
    ('PYG', 0),
    ('QAR', 2),
    ('RON', 2),
    ('RSD', 2),
    ('RUB', 2),
    ('RWF', 0),
    ('SAR', 2),
    ('SBD', 2),
    ('SCR', 2),
    ('SDG', 2),
    ('SEK', 2),
    ('SGD', 2),
    ('SHP', 2),
    ('SLE', 2),
    ('SOS', 2),
    ('SRD', 2),
    ('SSP', 2),
    ('STN', 2),
    ('SYP', 2),
    ('SZL', 2),
    ('THB', 2),
    ('TJS', 2),
    ('TMT', 2),
    ('TND', 3),
    ('TOP', 2),
    ('TRY', 2),
    ('TTD', 2),
    ('TWD', 2),
    ('TZS', 2),
    ('UAH', 2),
    ('UGX', 0),
    ('USD', 2),
    ('UYU', 2),
    ('UZS', 2),
    ('VES', 2),
    ('VND', 0),
    ('VUV', 0),
    ('WST', 2),
    ('XAF', 0),
    ('XCD', 2),
    ('XOF', 0),
    ('XPF', 0),
    ('YER', 2),
    ('ZAR', 2),
    ('ZMW', 2),
    ('ZWG', 2);

-- Which shard this database is. Written once on first start, checked on every start,
-- so that a configuration pointing shard 2 at shard 1's database is refused. Its
-- watermark (last commit_seq and posting time) advances in every batch's transaction,
-- guarded by its previous value: a writer that lost its fence cannot commit.
create table ledger_shard (
    singleton boolean primary key default true,
    shard_id integer not null,
    last_commit_seq bigint not null default 0,
    last_posted_at timestamptz not null default '-infinity',
    created_at timestamptz not null default now(),
    constraint ck_ledger_shard_singleton check (singleton)
);

create table ledger_account (
    account_id uuid primary key,
    tenant_id uuid not null,
    account_code text not null,
    account_type text not null,
    currency_code char(3) not null references currency (currency_code),
    status text not null default 'ACTIVE',
    allow_negative boolean not null default false,
    metadata jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    closed_at timestamptz,
    constraint uq_ledger_account_code unique (tenant_id, account_code),
    constraint ck_ledger_account_type check (account_type in ('ASSET', 'EXPENSE', 'LIABILITY', 'EQUITY', 'REVENUE')),
    constraint ck_ledger_account_status check (status in ('ACTIVE', 'FROZEN', 'CLOSED')),
    constraint ck_ledger_account_closed check (
        (status = 'CLOSED' and closed_at is not null) or (status <> 'CLOSED' and closed_at is null)
    )
);

-- Who changed an account's status, when and why (append-only).
create table ledger_account_status_change (
    change_id uuid primary key,
    tenant_id uuid not null,
    account_id uuid not null references ledger_account (account_id),
    from_status text not null,
    to_status text not null,
    actor text not null,
    reason_code text,
    changed_at timestamptz not null
);

-- The projection: derived from ledger_entry, rebuildable, checked by the audit.
create table account_balance (
    account_id uuid primary key references ledger_account (account_id),
    tenant_id uuid not null,
    currency_code char(3) not null,
    balance_minor bigint not null default 0,
    debits_minor bigint not null default 0,
    credits_minor bigint not null default 0,
    pending_debits_minor bigint not null default 0,
    pending_credits_minor bigint not null default 0,
    version bigint not null default 0,
    last_entry_id uuid,
    updated_at timestamptz not null default now(),
    constraint ck_account_balance_totals check (debits_minor >= 0 and credits_minor >= 0),
    constraint ck_account_balance_pending check (pending_debits_minor >= 0 and pending_credits_minor >= 0)
);

create table ledger_transaction (
    ledger_tx_id uuid not null,
    tenant_id uuid not null,
    commit_seq bigint not null,
    tx_type text not null,
    -- Rows are immutable, so this is the status at posting; REVERSED is derived from
    -- ledger_reversal when a transaction is read.
    tx_status text not null default 'POSTED',
    idempotency_key text not null,
    request_fingerprint text not null,
    external_ref_type text,
    external_ref text,
    business_ref text,
    occurred_at timestamptz not null,
    posted_at timestamptz not null,
    created_at timestamptz not null default now(),
    created_by text not null,
    reason_code text,
    metadata jsonb not null default '{}'::jsonb,
    reverses_ledger_tx_id uuid,
    constraint pk_ledger_transaction primary key (ledger_tx_id, posted_at),
    constraint ck_ledger_tx_status check (tx_status in ('PENDING', 'POSTED', 'REVERSED', 'REJECTED')),
    constraint ck_ledger_tx_posted_at check ((tx_status = 'POSTED' and posted_at is not null) or tx_status <> 'POSTED'),
    constraint ck_ledger_tx_external_ref check ((external_ref_type is null) = (external_ref is null))
) partition by range (posted_at);

create table ledger_entry (
    ledger_entry_id uuid not null,
    ledger_tx_id uuid not null,
    tenant_id uuid not null,
    account_id uuid not null,
    entry_side text not null,
    amount_minor bigint not null,
    currency_code char(3) not null,
    entry_seq integer not null,
    balance_after_minor bigint not null,
    commit_seq bigint not null,
    effective_at timestamptz not null,
    posted_at timestamptz not null,
    created_at timestamptz not null default now(),
    -- (ledger_tx_id, entry_seq) is the seed's uq_ledger_entry_seq, with the partition key.
    constraint pk_ledger_entry primary key (ledger_tx_id, entry_seq, posted_at),
    constraint ck_ledger_entry_side check (entry_side in ('DEBIT', 'CREDIT')),
    constraint ck_ledger_entry_amount_positive check (amount_minor > 0)
) partition by range (posted_at);

-- Statements walk an account's entries in posting order.
create index ix_ledger_entry_account_seq on ledger_entry (account_id, commit_seq);

-- Journal facts are append-only in the database itself: no role, not even the owner
-- or a superuser, can update, delete or truncate them while these triggers stand.
create function ledger_forbid_change() returns trigger
language plpgsql as $$
begin
    raise exception 'ledger: % on % is forbidden: ledger facts are immutable; correct by reversal', tg_op, tg_table_name
        using errcode = 'insufficient_privilege';
end
$$;

create table ledger_transaction_default partition of ledger_transaction default;
create table ledger_entry_default partition of ledger_entry default;

-- Monthly partitions from last month to months_ahead months ahead; the node calls this
-- at start-up. Rows outside every monthly partition land in the default partitions.
create function ledger_ensure_partitions(months_ahead integer) returns void
language plpgsql as $$
declare
    month_start date;
    parent text;
    name text;
begin
    for i in -1..months_ahead loop
        month_start := (date_trunc('month', now() at time zone 'UTC') + make_interval(months => i))::date;
        foreach parent in array array['ledger_transaction', 'ledger_entry'] loop
            name := format('%s_y%sm%s', parent, to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
            if to_regclass(name) is null then
                execute format(
                    'create table %I partition of %I for values from (%L) to (%L)',
                    name, parent,
                    (month_start::timestamp at time zone 'UTC'),
                    ((month_start + interval '1 month')::timestamp at time zone 'UTC'));
                -- row triggers are inherited from the parent; TRUNCATE triggers are not
                execute format(
                    'create trigger trg_%s_no_truncate before truncate on %I for each statement execute function ledger_forbid_change()',
                    name, name);
            end if;
        end loop;
    end loop;
end
$$;

-- Command layer: one row per idempotency key whose home is this shard.
create table ledger_idempotency (
    tenant_id uuid not null,
    idempotency_key text not null,
    request_fingerprint text not null,
    status text not null,
    ledger_tx_id uuid,
    response_code integer,
    response_body jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    expires_at timestamptz not null,
    constraint pk_ledger_idempotency primary key (tenant_id, idempotency_key),
    constraint ck_idempotency_status check (status in ('PROCESSING', 'SUCCEEDED', 'FAILED_RETRYABLE', 'FAILED_FINAL')),
    constraint ck_idempotency_succeeded check (status <> 'SUCCEEDED' or ledger_tx_id is not null)
);

-- An external reference is used by one transaction per tenant.
create table ledger_external_ref (
    tenant_id uuid not null,
    external_ref_type text not null,
    external_ref text not null,
    ledger_tx_id uuid not null,
    created_at timestamptz not null default now(),
    constraint uq_ledger_tx_external_ref primary key (tenant_id, external_ref_type, external_ref)
);

-- A transaction is reversed at most once.
create table ledger_reversal (
    tenant_id uuid not null,
    reversed_ledger_tx_id uuid not null,
    reversal_ledger_tx_id uuid not null,
    created_at timestamptz not null default now(),
    constraint uq_ledger_reversal_once primary key (tenant_id, reversed_ledger_tx_id)
);

create table ledger_outbox (
    outbox_id uuid primary key,
    tenant_id uuid not null,
    aggregate_type text not null,
    aggregate_id uuid not null,
    event_type text not null,
    event_version integer not null default 1,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    published_at timestamptz,
    attempt_count integer not null default 0,
    constraint ck_outbox_attempt_count check (attempt_count >= 0)
);

create index ix_ledger_outbox_unpublished on ledger_outbox (created_at, outbox_id) where published_at is null;



create trigger trg_ledger_transaction_immutable before update or delete on ledger_transaction
    for each row execute function ledger_forbid_change();
create trigger trg_ledger_transaction_no_truncate before truncate on ledger_transaction
    for each statement execute function ledger_forbid_change();
create trigger trg_ledger_entry_immutable before update or delete on ledger_entry
    for each row execute function ledger_forbid_change();
create trigger trg_ledger_entry_no_truncate before truncate on ledger_entry
    for each statement execute function ledger_forbid_change();
create trigger trg_ledger_external_ref_immutable before update or delete on ledger_external_ref
    for each row execute function ledger_forbid_change();
create trigger trg_ledger_reversal_immutable before update or delete on ledger_reversal
    for each row execute function ledger_forbid_change();
create trigger trg_ledger_account_status_change_immutable before update or delete on ledger_account_status_change
    for each row execute function ledger_forbid_change();
create trigger trg_ledger_transaction_default_no_truncate before truncate on ledger_transaction_default
    for each statement execute function ledger_forbid_change();
create trigger trg_ledger_entry_default_no_truncate before truncate on ledger_entry_default
    for each statement execute function ledger_forbid_change();
create trigger trg_ledger_external_ref_no_truncate before truncate on ledger_external_ref
    for each statement execute function ledger_forbid_change();
create trigger trg_ledger_reversal_no_truncate before truncate on ledger_reversal
    for each statement execute function ledger_forbid_change();
create trigger trg_ledger_account_status_change_no_truncate before truncate on ledger_account_status_change
    for each statement execute function ledger_forbid_change();
