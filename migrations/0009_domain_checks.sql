-- The one-column rules of the hot tables become domains; the rules themselves do not
-- change. Why: PostgreSQL reads a table's CHECK constraints from their stored text and
-- plans them again in every statement that writes the table, so the writer's batch
-- statement paid for eleven of them per batch whatever its size. `perf` of the writer
-- backends at a quarter of the peak found that re-reading (`stringToNode`, 4.9% of their
-- samples) and re-planning (`ExecPrepareExpr`, 2.3%) a fixed cost of every batch
-- (docs/BENCHMARKS.md, "Checks the database re-reads for every batch"). A domain's
-- checks are planned once per connection and cached, and a column of a domain type is
-- checked on every insert and update exactly as the table check was.
--
-- Rules that relate two columns stay table checks: a transaction's external reference
-- type and value, a succeeded key's transaction. So does the shard row's `check
-- (singleton)`, a boolean column of its own whose expression is the column itself.
-- ck_ledger_tx_posted_at ("a POSTED transaction has posted_at") is dropped without a
-- replacement because posted_at is NOT NULL (and part of the primary key), which says more.
--
-- Changing a column to a domain with checks rewrites its table under an exclusive lock:
-- on a shard that already holds a large journal, run the upgrade in a maintenance window.

create domain ledger_positive_minor as bigint check (value > 0);
create domain ledger_nonnegative_minor as bigint check (value >= 0);
create domain ledger_entry_side as text check (value in ('DEBIT', 'CREDIT'));
create domain ledger_tx_status as text check (value in ('PENDING', 'POSTED', 'REVERSED', 'REJECTED'));
create domain ledger_idempotency_status as text
    check (value in ('PROCESSING', 'SUCCEEDED', 'FAILED_RETRYABLE', 'FAILED_FINAL'));

alter table ledger_entry
    drop constraint ck_ledger_entry_side,
    drop constraint ck_ledger_entry_amount_positive,
    alter column entry_side type ledger_entry_side,
    alter column amount_minor type ledger_positive_minor;

alter table ledger_transaction
    drop constraint ck_ledger_tx_status,
    drop constraint ck_ledger_tx_posted_at,
    alter column tx_status type ledger_tx_status;

alter table ledger_idempotency
    drop constraint ck_idempotency_status,
    alter column status type ledger_idempotency_status;

alter table account_balance
    drop constraint ck_account_balance_totals,
    drop constraint ck_account_balance_pending,
    drop constraint ck_account_balance_unsettled,
    alter column debits_minor type ledger_nonnegative_minor,
    alter column credits_minor type ledger_nonnegative_minor,
    alter column pending_debits_minor type ledger_nonnegative_minor,
    alter column pending_credits_minor type ledger_nonnegative_minor,
    alter column unsettled_debits_minor type ledger_nonnegative_minor,
    alter column unsettled_credits_minor type ledger_nonnegative_minor;
