//! Everything the node says to PostgreSQL. Write functions run inside the shard writer's
//! transaction; read functions take any executor (the read pool).
//!
//! Writes are set-based: one statement per table per batch, with the batch's rows bound
//! as arrays and spread by `UNNEST`, so a batch of 500 transfers costs the same number
//! of round trips as one.

use chrono::{DateTime, Utc};
use ledger_core::account::{AccountState, AccountStatus};
use ledger_core::batch::{KeyOutcome, KeyRecord, KeyStatus, OriginalTx, RefClaim, Snapshot, Writes};
use ledger_core::command::{EntryCommand, ExternalRef};
use ledger_core::currency::Currency;
use ledger_core::fingerprint::attributes_digest;
use ledger_core::ids::is_saga_id;
use ledger_core::money::{AccountType, Side};
use ledger_core::saga::{SagaKind, SagaRecord, SagaState};
use ledger_protocol::internal::StatementQuery;
use ledger_protocol::reply::{
    AccountObject, BalanceObject, EntryReply, PostReply, StatementEntry, StatementReply, TransactionObject,
};
use ledger_protocol::request::statement_cursor;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{PgExecutor, Row};
use std::collections::HashMap;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Monthly partitions created ahead of time at start-up.
pub const PARTITION_MONTHS_AHEAD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("this database belongs to shard {found}, not shard {expected}")]
    WrongShard { expected: u16, found: i32 },
    #[error("the shard watermark moved under us: another writer committed to this shard")]
    Fenced,
    #[error("a key of an optimistically planned batch is already recorded")]
    KeysAlreadyRecorded,
    /// The database refused entries that do not balance (migration 0010): the writer let
    /// through what it must never write. A bug, never a client's doing.
    #[error("the database refused a transaction that does not balance: {0}")]
    Unbalanced(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the shard writer is not connected: {0}")]
    WriterDown(String),
}

/// SQLSTATEs the ledger's own checks raise (migration 0010).
const SQLSTATE_WATERMARK_MOVED: &str = "LG001";
const SQLSTATE_KEYS_ALREADY_RECORDED: &str = "LG002";
/// The constraint the database names when entries do not balance (migration 0010).
const CONSTRAINT_ENTRIES_BALANCED: &str = "ledger_entry_balanced_per_currency";

/// A failed batch write, told apart by SQLSTATE and constraint name.
fn batch_write_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(database) = &error {
        match database.code().as_deref() {
            Some(SQLSTATE_WATERMARK_MOVED) => return StoreError::Fenced,
            Some(SQLSTATE_KEYS_ALREADY_RECORDED) => return StoreError::KeysAlreadyRecorded,
            _ if database.constraint() == Some(CONSTRAINT_ENTRIES_BALANCED) => {
                return StoreError::Unbalanced(database.message().to_owned());
            }
            _ => {}
        }
    }
    error.into()
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

/// Brings a shard database to the current schema and claims it for `shard_id`.
pub async fn prepare_shard(conn: &mut PgConnection, shard_id: u16) -> Result<(), StoreError> {
    MIGRATOR.run_direct(None, &mut *conn, false).await?;
    sqlx::query("select ledger_ensure_partitions($1)").bind(PARTITION_MONTHS_AHEAD).execute(&mut *conn).await?;
    sqlx::query("insert into ledger_shard (shard_id) values ($1) on conflict (singleton) do nothing")
        .bind(shard_id as i32)
        .execute(&mut *conn)
        .await?;
    let found: i32 = sqlx::query_scalar("select shard_id from ledger_shard").fetch_one(&mut *conn).await?;
    if found != shard_id as i32 {
        return Err(StoreError::WrongShard { expected: shard_id, found });
    }
    Ok(())
}

/// Makes the writer's session reuse one plan per statement. Left to itself PostgreSQL
/// re-plans the batch statement on every execution (its cost estimates favour plans made
/// for the actual arrays), and planning a dozen data-modifying CTEs cost about as much
/// as running them for the few commands of a batch at moderate load (0.7 ms of 1.8 ms,
/// pg_stat_statements, docs/BENCHMARKS.md). The generic plan's index lookups suit every
/// batch size the writer makes.
pub async fn use_generic_plans(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("set plan_cache_mode = force_generic_plan").execute(conn).await?;
    Ok(())
}

/// Key of the session advisory lock that fences a shard's writer.
pub fn fence_lock_key(shard_id: u16) -> i64 {
    0x4c45_4447_0000_0000 | shard_id as i64
}

/// Takes the shard's writer fence on this connection; false if another session holds it.
pub async fn try_fence(conn: &mut PgConnection, shard_id: u16) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(fence_lock_key(shard_id)).fetch_one(conn).await?)
}

#[derive(Debug, Clone, Copy)]
pub struct Watermark {
    pub last_commit_seq: i64,
    pub last_posted_at: Option<DateTime<Utc>>,
    /// The last outbox event's number (gap-free per shard, in commit order).
    pub last_event_seq: i64,
}

pub async fn watermark(conn: impl PgExecutor<'_>) -> Result<Watermark, StoreError> {
    let row = sqlx::query(
        "select last_commit_seq, case when last_posted_at = '-infinity' then null else last_posted_at end as last_posted_at,
                last_event_seq
         from ledger_shard",
    )
    .fetch_one(conn)
    .await?;
    Ok(Watermark { last_commit_seq: row.try_get(0)?, last_posted_at: row.try_get(1)?, last_event_seq: row.try_get(2)? })
}

fn account_state(row: &PgRow) -> Result<AccountState, StoreError> {
    let type_text: String = row.try_get("account_type")?;
    let currency_text: String = row.try_get("currency_code")?;
    let status_text: String = row.try_get("status")?;
    let account_type = AccountType::parse(&type_text).ok_or_else(|| corrupt("account type", &type_text))?;
    let currency = Currency::parse(&currency_text).ok_or_else(|| corrupt("currency", &currency_text))?;
    let allow_negative: bool = row.try_get("allow_negative")?;
    let metadata: Value = row.try_get("metadata")?;
    Ok(AccountState {
        account_id: row.try_get("account_id")?,
        tenant_id: row.try_get("tenant_id")?,
        account_type,
        currency,
        status: AccountStatus::parse(&status_text).ok_or_else(|| corrupt("account status", &status_text))?,
        allow_negative,
        balance_minor: row.try_get("balance_minor")?,
        debits_minor: row.try_get("debits_minor")?,
        credits_minor: row.try_get("credits_minor")?,
        unsettled_debits_minor: row.try_get("unsettled_debits_minor")?,
        unsettled_credits_minor: row.try_get("unsettled_credits_minor")?,
        version: row.try_get("version")?,
        last_entry_id: row.try_get("last_entry_id")?,
        attributes_digest: attributes_digest(account_type, currency, allow_negative, &metadata),
    })
}

pub async fn load_accounts(conn: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<AccountState>, StoreError> {
    let rows = sqlx::query(
        "select a.account_id, a.tenant_id, a.account_type, a.currency_code, a.status, a.allow_negative, a.metadata,
                b.balance_minor, b.debits_minor, b.credits_minor, b.unsettled_debits_minor, b.unsettled_credits_minor,
                b.version, b.last_entry_id
         from ledger_account a join account_balance b on b.account_id = a.account_id
         where a.account_id = any($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.iter().map(account_state).collect()
}

pub async fn load_keys(
    conn: impl PgExecutor<'_>,
    keys: &[(Uuid, String)],
) -> Result<HashMap<(Uuid, String), KeyRecord>, StoreError> {
    let tenants: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows = sqlx::query(
        "select i.tenant_id, i.idempotency_key, i.request_fingerprint, i.status, i.ledger_tx_id, i.response_code, i.response_body,
                i.target_shard
         from ledger_idempotency i
         join unnest($1::uuid[], $2::text[]) as k(tenant_id, idempotency_key)
           on i.tenant_id = k.tenant_id and i.idempotency_key = k.idempotency_key",
    )
    .bind(&tenants)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status")?;
        let outcome = match status.as_str() {
            "SUCCEEDED" => KeyOutcome::Posted {
                ledger_tx_id: row
                    .try_get::<Option<Uuid>, _>("ledger_tx_id")?
                    .ok_or_else(|| corrupt("key without tx", &status))?,
            },
            "FAILED_FINAL" => KeyOutcome::Rejected {
                status: row.try_get::<Option<i32>, _>("response_code")?.unwrap_or(500) as u16,
                body: row.try_get::<Option<Value>, _>("response_body")?.unwrap_or(Value::Null),
            },
            "PROCESSING" => {
                match (row.try_get::<Option<i32>, _>("target_shard")?, row.try_get::<Option<Uuid>, _>("ledger_tx_id")?) {
                    (Some(target), _) => KeyOutcome::Processing { target_shard: target as u16 },
                    (None, Some(saga_id)) => KeyOutcome::SagaRunning { saga_id },
                    (None, None) => return Err(corrupt("claim without target or saga", &status)),
                }
            }
            "FAILED_RETRYABLE" => KeyOutcome::Retryable,
            other => return Err(corrupt("idempotency status", other)),
        };
        let key = (row.try_get("tenant_id")?, row.try_get("idempotency_key")?);
        found.insert(key, KeyRecord { fingerprint: row.try_get("request_fingerprint")?, outcome });
    }
    Ok(found)
}

/// Who holds each external reference on this shard, in one round trip: transactions
/// posted here that use it, and claims of references whose home is this shard.
pub async fn load_ref_holders(
    conn: impl PgExecutor<'_>,
    refs: &[(Uuid, ExternalRef)],
) -> Result<(HashMap<(Uuid, ExternalRef), Uuid>, HashMap<(Uuid, ExternalRef), RefClaim>), StoreError> {
    let tenants: Vec<Uuid> = refs.iter().map(|r| r.0).collect();
    let types: Vec<&str> = refs.iter().map(|r| r.1.ref_type.as_str()).collect();
    let names: Vec<&str> = refs.iter().map(|r| r.1.reference.as_str()).collect();
    let rows = sqlx::query(
        "with wanted as (select * from unnest($1::uuid[], $2::text[], $3::text[]) as k(tenant_id, ref_type, ref))
         select x.tenant_id, x.external_ref_type, x.external_ref, null::text as claimed_by, x.ledger_tx_id
         from ledger_external_ref x
         join wanted k on x.tenant_id = k.tenant_id and x.external_ref_type = k.ref_type and x.external_ref = k.ref
         union all
         select c.tenant_id, c.external_ref_type, c.external_ref, c.idempotency_key, c.ledger_tx_id
         from ledger_external_ref_claim c
         join wanted k on c.tenant_id = k.tenant_id and c.external_ref_type = k.ref_type and c.external_ref = k.ref",
    )
    .bind(&tenants)
    .bind(&types)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    let (mut posted, mut claims) = (HashMap::new(), HashMap::new());
    for row in &rows {
        let id = (row.try_get(0)?, ExternalRef { ref_type: row.try_get(1)?, reference: row.try_get(2)? });
        match row.try_get::<Option<String>, _>(3)? {
            None => {
                posted.insert(id, row.try_get(4)?);
            }
            Some(owner_key) => {
                claims.insert(id, RefClaim { owner_key, ledger_tx_id: row.try_get(4)? });
            }
        }
    }
    Ok((posted, claims))
}

fn entry_command(row: &PgRow) -> Result<EntryCommand, StoreError> {
    let side: String = row.try_get("entry_side")?;
    let currency: String = row.try_get("currency_code")?;
    Ok(EntryCommand {
        account_id: row.try_get("account_id")?,
        side: Side::parse(&side).ok_or_else(|| corrupt("side", &side))?,
        amount_minor: row.try_get("amount_minor")?,
        currency: Currency::parse(&currency).ok_or_else(|| corrupt("currency", &currency))?,
    })
}

pub async fn load_originals(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, OriginalTx>, StoreError> {
    let rows = sqlx::query(
        "select t.ledger_tx_id, t.tenant_id, t.tx_type, t.business_ref, r.reversal_ledger_tx_id, h.saga_id is not null
         from ledger_transaction t
         left join ledger_reversal r on r.tenant_id = t.tenant_id and r.reversed_ledger_tx_id = t.ledger_tx_id
         left join ledger_saga_hold h on h.saga_id = t.ledger_tx_id
         where t.ledger_tx_id = any($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut originals = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        originals.insert(
            id,
            OriginalTx {
                ledger_tx_id: id,
                tenant_id: row.try_get(1)?,
                tx_type: row.try_get(2)?,
                business_ref: row.try_get(3)?,
                entries: Vec::new(),
                seqs: Vec::new(),
                reversed_by: row.try_get(4)?,
                held: row.try_get(5)?,
            },
        );
    }
    let found: Vec<Uuid> = originals.keys().copied().collect();
    let entries = sqlx::query(
        "select ledger_tx_id, account_id, entry_side, amount_minor, currency_code, entry_seq
         from ledger_entry where ledger_tx_id = any($1) order by ledger_tx_id, entry_seq",
    )
    .bind(&found)
    .fetch_all(&mut *conn)
    .await?;
    for row in &entries {
        let id: Uuid = row.try_get("ledger_tx_id")?;
        let original = originals.get_mut(&id).expect("selected above");
        original.entries.push(entry_command(row)?);
        original.seqs.push(row.try_get("entry_seq")?);
    }
    Ok(originals)
}

/// The parts of `sql/write_batch.sql` in order, each `(name, text)`.
fn batch_statement_parts() -> &'static [(&'static str, &'static str)] {
    static PARTS: std::sync::OnceLock<Vec<(&'static str, &'static str)>> = std::sync::OnceLock::new();
    PARTS.get_or_init(|| {
        include_str!("sql/write_batch.sql")
            .split("--@ ")
            .skip(1) // the file's header comment
            .map(|part| part.split_once('\n').expect("a part name ends its line"))
            .collect()
    })
}

/// The one-statement write for this batch: the watermark guard, the final check, and
/// only the parts the batch has rows for (each variant is built once and then prepared
/// once per connection, like any other statement).
pub fn batch_statement(writes: &Writes) -> &'static str {
    let has_rows = |part: &str| match part {
        "guard" | "final" => true,
        "transactions" => !writes.transactions.is_empty(),
        "entries" => !writes.entries.is_empty(),
        "released_keys" => writes.keys.iter().any(|k| k.status == KeyStatus::FailedRetryable),
        "keys" => writes.keys.iter().any(|k| k.status != KeyStatus::FailedRetryable),
        "balances" => !writes.touched_accounts.is_empty(),
        "outbox" => !writes.outbox.is_empty(),
        "external_refs" => !writes.external_refs.is_empty(),
        "reversals" => !writes.reversals.is_empty(),
        "sagas" => !writes.sagas.is_empty(),
        "holds_opened" => !writes.holds_opened.is_empty(),
        "holds_settled" => !writes.holds_settled.is_empty(),
        other => panic!("write_batch.sql has a part {other:?} that batch_statement does not know"),
    };
    let parts = batch_statement_parts();
    let mask = parts.iter().enumerate().filter(|(_, (name, _))| has_rows(name)).fold(0u64, |m, (i, _)| m | 1 << i);
    static VARIANTS: std::sync::Mutex<Option<HashMap<u64, &'static str>>> = std::sync::Mutex::new(None);
    let mut variants = VARIANTS.lock().expect("not poisoned");
    variants.get_or_insert_with(HashMap::new).entry(mask).or_insert_with(|| {
        let chosen = |i: usize| mask & (1 << i) != 0;
        let ctes: Vec<&str> = parts
            .iter()
            .enumerate()
            .filter(|&(i, (name, _))| chosen(i) && *name != "final")
            .map(|(_, (_, text))| text.trim_end())
            .collect();
        let keys_written = has_rows("keys");
        let (_, last) = parts.iter().find(|(name, _)| *name == "final").expect("write_batch.sql has a final part");
        let last = if keys_written { last.to_string() } else { last.replace("(select count(*) from keys)", "0") };
        // built once per variant and kept for the life of the process: a handful exist
        Box::leak(format!("with {}\n{last}", ctes.join(",\n")).into_boxed_str())
    })
}

/// Whether a batch needs more than the one-statement write (rare commands).
pub fn needs_transaction(writes: &Writes) -> bool {
    !writes.accounts.is_empty() || !writes.status_changes.is_empty() || !writes.ref_claims.is_empty()
}

/// Writes a planned batch. Postings and saga logs go in ONE statement; the rare rows (new
/// accounts, status changes, reference claims) go first, in which case the caller must have opened
/// a transaction (see [`needs_transaction`]).
pub async fn write_batch(
    conn: &mut PgConnection,
    writes: &Writes,
    snapshot: &Snapshot,
    previous: Watermark,
    next: Watermark,
    keys_assumed_new: bool,
) -> Result<(), StoreError> {
    if !writes.accounts.is_empty() {
        insert_accounts(conn, writes).await?;
    }
    if !writes.status_changes.is_empty() {
        insert_status_changes(conn, writes).await?;
    }
    if !writes.ref_claims.is_empty() {
        write_ref_claims(conn, writes).await?;
    }
    let t = &writes.transactions;
    let e = &writes.entries;
    let k = &writes.keys;
    let o = &writes.outbox;
    let x = &writes.external_refs;
    let r = &writes.reversals;
    let g = &writes.sagas;
    let h = &writes.holds_opened;
    let states: Vec<&AccountState> = writes
        .touched_accounts
        .iter()
        .map(|id| snapshot.accounts.get(id).expect("touched accounts are in the snapshot"))
        .collect();
    let now = t.first().map(|t| t.posted_at).or_else(|| writes.status_changes.first().map(|c| c.changed_at));
    let result = sqlx::query(batch_statement(writes))
        .bind(previous.last_commit_seq)
        .bind(next.last_commit_seq)
        .bind(next.last_posted_at)
        // transactions
        .bind(t.iter().map(|r| r.ledger_tx_id).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.commit_seq).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.tx_type.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.fingerprint.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.external_ref.as_ref().map(|x| x.ref_type.as_str())).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.external_ref.as_ref().map(|x| x.reference.as_str())).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.business_ref.as_deref()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.posted_at).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.actor.as_str()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.reason_code.as_deref()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.metadata.to_string()).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.reverses_ledger_tx_id).collect::<Vec<_>>())
        // entries
        .bind(e.iter().map(|r| r.ledger_entry_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.ledger_tx_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.account_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.side.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.amount_minor).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.entry_seq).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.balance_after_minor).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.commit_seq).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.effective_at).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.posted_at).collect::<Vec<_>>())
        // idempotency records
        .bind(k.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.fingerprint.as_str()).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.target_shard.map(i32::from)).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.ledger_tx_id).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.response_status as i32).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.response_body.as_ref().map(|b| b.to_string())).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(k.iter().map(|r| r.expires_at).collect::<Vec<_>>())
        // balances
        .bind(states.iter().map(|s| s.account_id).collect::<Vec<_>>())
        .bind(states.iter().map(|s| s.balance_minor).collect::<Vec<_>>())
        .bind(states.iter().map(|s| s.debits_minor).collect::<Vec<_>>())
        .bind(states.iter().map(|s| s.credits_minor).collect::<Vec<_>>())
        .bind(states.iter().map(|s| s.version).collect::<Vec<_>>())
        .bind(states.iter().map(|s| s.last_entry_id).collect::<Vec<_>>())
        .bind(now)
        // outbox
        .bind(o.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(o.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
        .bind(o.iter().map(|e| e.aggregate_type).collect::<Vec<_>>())
        .bind(o.iter().map(|e| e.aggregate_id).collect::<Vec<_>>())
        .bind(o.iter().map(|e| e.event_type).collect::<Vec<_>>())
        .bind(o.iter().map(|e| e.payload.to_string()).collect::<Vec<_>>())
        .bind(o.iter().map(|e| e.created_at).collect::<Vec<_>>())
        // external references and reversals
        .bind(x.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(x.iter().map(|r| r.external_ref.ref_type.as_str()).collect::<Vec<_>>())
        .bind(x.iter().map(|r| r.external_ref.reference.as_str()).collect::<Vec<_>>())
        .bind(x.iter().map(|r| r.ledger_tx_id).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.reversed_ledger_tx_id).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.reversal_ledger_tx_id).collect::<Vec<_>>())
        .bind(keys_assumed_new)
        .bind(k.iter().filter(|r| r.status != KeyStatus::FailedRetryable).count() as i64)
        .bind((1..=o.len() as i64).map(|i| previous.last_event_seq + i).collect::<Vec<_>>())
        .bind(next.last_event_seq)
        // saga logs
        .bind(g.iter().map(|s| s.saga_id).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.tenant_id).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.idempotency_key.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.fingerprint.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|s| if s.kind == SagaKind::Post { "POST" } else { "REVERSE" }).collect::<Vec<_>>())
        .bind(g.iter().map(|s| if let SagaKind::Reverse { of } = s.kind { Some(of) } else { None }).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.state.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|s| json_text(&s.header)).collect::<Vec<_>>())
        .bind(g.iter().map(|s| json_text(&s.steps)).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.failure.as_ref().map(json_text)).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.reply.as_ref().map(json_text)).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.reversed_by).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.created_at).collect::<Vec<_>>())
        .bind(g.iter().map(|s| s.updated_at).collect::<Vec<_>>())
        // held saga legs, and their unsettled amounts on the balances
        .bind(states.iter().map(|s| s.unsettled_debits_minor).collect::<Vec<_>>())
        .bind(states.iter().map(|s| s.unsettled_credits_minor).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.saga_id).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.step).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(&writes.holds_settled)
        .execute(&mut *conn)
        .await;
    result.map(|_| ()).map_err(batch_write_error)
}

async fn insert_accounts(conn: &mut PgConnection, writes: &Writes) -> Result<(), StoreError> {
    let a = &writes.accounts;
    sqlx::query(
        "insert into ledger_account (account_id, tenant_id, account_code, account_type, currency_code, allow_negative, metadata, created_at)
         select id, tenant, code, kind, currency, allow_negative, metadata::jsonb, created
         from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::text[], $8::timestamptz[])
              as u(id, tenant, code, kind, currency, allow_negative, metadata, created)",
    )
    .bind(a.iter().map(|n| n.command.account_id).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.tenant_id).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.code.as_str()).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.account_type.as_str()).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.currency.as_str()).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.allow_negative).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.metadata.to_string()).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.created_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into account_balance (account_id, tenant_id, currency_code, updated_at)
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])",
    )
    .bind(a.iter().map(|n| n.command.account_id).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.tenant_id).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.command.currency.as_str()).collect::<Vec<_>>())
    .bind(a.iter().map(|n| n.created_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_status_changes(conn: &mut PgConnection, writes: &Writes) -> Result<(), StoreError> {
    let s = &writes.status_changes;
    // Status changes are rare and several may touch one account in a batch: apply them in
    // order, one statement each, so the last one wins as it did in the plan.
    for change in s {
        sqlx::query(
            "update ledger_account set status = $2,
                    closed_at = case when $2 = 'CLOSED' then $3 else null end
             where account_id = $1",
        )
        .bind(change.account_id)
        .bind(change.to.as_str())
        .bind(change.changed_at)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "insert into ledger_account_status_change (change_id, tenant_id, account_id, from_status, to_status, actor, reason_code, changed_at)
         select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])",
    )
    .bind(s.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.tenant_id).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.account_id).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.from.as_str()).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.to.as_str()).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.actor.as_str()).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.reason_code.as_deref()).collect::<Vec<_>>())
    .bind(s.iter().map(|c| c.changed_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_ref_claims(conn: &mut PgConnection, writes: &Writes) -> Result<(), StoreError> {
    let (released, kept): (Vec<_>, Vec<_>) = writes.ref_claims.iter().partition(|c| c.released);
    if !kept.is_empty() {
        sqlx::query(
            "insert into ledger_external_ref_claim (tenant_id, external_ref_type, external_ref, idempotency_key, ledger_tx_id,
                    request_fingerprint)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[])
             on conflict (tenant_id, external_ref_type, external_ref) do update
                set ledger_tx_id = excluded.ledger_tx_id, updated_at = now()
                where ledger_external_ref_claim.idempotency_key = excluded.idempotency_key
                  and ledger_external_ref_claim.ledger_tx_id is null",
        )
        .bind(kept.iter().map(|c| c.tenant_id).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.external_ref.ref_type.as_str()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.external_ref.reference.as_str()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.owner_key.as_str()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.ledger_tx_id).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.owner_fingerprint.as_deref()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !released.is_empty() {
        sqlx::query(
            "delete from ledger_external_ref_claim c
             using unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) as u(tenant, ref_type, ref, key)
             where c.tenant_id = u.tenant and c.external_ref_type = u.ref_type and c.external_ref = u.ref
               and c.idempotency_key = u.key and c.ledger_tx_id is null",
        )
        .bind(released.iter().map(|c| c.tenant_id).collect::<Vec<_>>())
        .bind(released.iter().map(|c| c.external_ref.ref_type.as_str()).collect::<Vec<_>>())
        .bind(released.iter().map(|c| c.external_ref.reference.as_str()).collect::<Vec<_>>())
        .bind(released.iter().map(|c| c.owner_key.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("saga parts serialize")
}

const SAGA_COLUMNS: &str = "saga_id, tenant_id, idempotency_key, request_fingerprint, saga_kind, reverses_saga_id, state, header,
     steps, failure, reply, reversed_by_saga_id, created_at, updated_at";

fn from_json<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| corrupt(what, &e.to_string()))
}

fn saga_record(row: &PgRow) -> Result<SagaRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let kind: String = row.try_get("saga_kind")?;
    let parse = |column: &str| -> Result<Value, StoreError> { Ok(row.try_get::<Value, _>(column)?) };
    Ok(SagaRecord {
        saga_id: row.try_get("saga_id")?,
        tenant_id: row.try_get("tenant_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        fingerprint: row.try_get("request_fingerprint")?,
        kind: match (kind.as_str(), row.try_get::<Option<Uuid>, _>("reverses_saga_id")?) {
            ("POST", _) => SagaKind::Post,
            ("REVERSE", Some(of)) => SagaKind::Reverse { of },
            _ => return Err(corrupt("saga kind", &kind)),
        },
        header: from_json(parse("header")?, "saga header")?,
        steps: from_json(parse("steps")?, "saga steps")?,
        state: SagaState::parse(&state).ok_or_else(|| corrupt("saga state", &state))?,
        failure: row.try_get::<Option<Value>, _>("failure")?.map(|v| from_json(v, "saga failure")).transpose()?,
        reply: row.try_get("reply")?,
        reversed_by: row.try_get("reversed_by_saga_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn load_sagas(conn: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, SagaRecord>, StoreError> {
    let sql = format!("select {SAGA_COLUMNS} from ledger_saga where saga_id = any($1)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(conn).await?;
    rows.iter().map(|row| saga_record(row).map(|s| (s.saga_id, s))).collect()
}

/// Claims on this home shard whose request has not been heard of for `idle_ms`, oldest
/// first: keys claimed for requests decided on another shard, and pending references.
pub async fn stale_claims(
    conn: &mut PgConnection,
    idle_ms: i64,
    limit: i64,
) -> Result<ledger_protocol::internal::StaleClaims, StoreError> {
    use ledger_protocol::internal::{StaleClaims, StaleKeyClaim, StaleRefClaim};
    let keys: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
        "select tenant_id, idempotency_key, request_fingerprint, target_shard from ledger_idempotency
         where status = 'PROCESSING' and target_shard is not null
           and updated_at < now() - make_interval(secs => $1 / 1000.0)
         order by updated_at limit $2",
    )
    .bind(idle_ms as f64)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let refs: Vec<(Uuid, String, String, String, Option<String>)> = sqlx::query_as(
        "select tenant_id, external_ref_type, external_ref, idempotency_key, request_fingerprint
         from ledger_external_ref_claim
         where ledger_tx_id is null and updated_at < now() - make_interval(secs => $1 / 1000.0)
         order by updated_at limit $2",
    )
    .bind(idle_ms as f64)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(StaleClaims {
        keys: keys
            .into_iter()
            .map(|(tenant_id, idempotency_key, fingerprint, target)| StaleKeyClaim {
                tenant_id,
                idempotency_key,
                fingerprint,
                target_shard: target as u16,
            })
            .collect(),
        refs: refs
            .into_iter()
            .map(|(tenant_id, ref_type, reference, owner_key, owner_fingerprint)| StaleRefClaim {
                tenant_id,
                external_ref: ExternalRef { ref_type, reference },
                owner_key,
                owner_fingerprint,
            })
            .collect(),
    })
}

pub async fn saga(conn: impl PgExecutor<'_>, tenant_id: Uuid, saga_id: Uuid) -> Result<Option<SagaRecord>, StoreError> {
    let sql = format!("select {SAGA_COLUMNS} from ledger_saga where saga_id = $1 and tenant_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(saga_id).bind(tenant_id).fetch_optional(conn).await?;
    row.as_ref().map(saga_record).transpose()
}

/// Sagas not finished whose log has not moved for `idle_ms`: the ones to resume.
pub async fn sagas_in_flight(conn: impl PgExecutor<'_>, idle_ms: i64, limit: i64) -> Result<Vec<SagaRecord>, StoreError> {
    let sql = format!(
        "select {SAGA_COLUMNS} from ledger_saga
         where state in ('RUNNING', 'COMPENSATING') and updated_at < now() - make_interval(secs => $1::float8 / 1000)
         order by updated_at limit $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(idle_ms as f64).bind(limit).fetch_all(conn).await?;
    rows.iter().map(saga_record).collect()
}

// ---- reads -------------------------------------------------------------------------

pub async fn account_object(
    conn: impl PgExecutor<'_>,
    tenant_id: Uuid,
    account_id: Uuid,
) -> Result<Option<AccountObject>, StoreError> {
    let row = sqlx::query(
        "select a.account_id, a.tenant_id, a.account_code, a.account_type, a.currency_code, a.status, a.allow_negative,
                a.metadata, a.created_at, a.closed_at,
                b.balance_minor, b.debits_minor, b.credits_minor, b.version, b.updated_at,
                case when a.account_type in ('ASSET', 'EXPENSE') then b.unsettled_debits_minor
                     else b.unsettled_credits_minor end as held_minor
         from ledger_account a join account_balance b on b.account_id = a.account_id
         where a.account_id = $1 and a.tenant_id = $2",
    )
    .bind(account_id)
    .bind(tenant_id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(AccountObject {
        account_id: row.try_get("account_id")?,
        tenant_id: row.try_get("tenant_id")?,
        code: row.try_get("account_code")?,
        account_type: row.try_get("account_type")?,
        currency: row.try_get("currency_code")?,
        status: row.try_get("status")?,
        allow_negative: row.try_get("allow_negative")?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
        closed_at: row.try_get("closed_at")?,
        balance: BalanceObject {
            balance_minor: row.try_get("balance_minor")?,
            debits_minor: row.try_get("debits_minor")?,
            credits_minor: row.try_get("credits_minor")?,
            held_minor: row.try_get("held_minor")?,
            version: row.try_get("version")?,
            updated_at: row.try_get("updated_at")?,
        },
    }))
}

fn entry_reply(row: &PgRow) -> Result<EntryReply, StoreError> {
    let side: String = row.try_get("entry_side")?;
    Ok(EntryReply {
        ledger_entry_id: row.try_get("ledger_entry_id")?,
        account_id: row.try_get("account_id")?,
        side: Side::parse(&side).ok_or_else(|| corrupt("side", &side))?.as_str(),
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency_code")?,
        entry_seq: row.try_get("entry_seq")?,
        balance_after_minor: row.try_get("balance_after_minor")?,
    })
}

/// The posting time window a ledger id can have been posted in: its v7 timestamp is the
/// posting time truncated to the millisecond, which lets PostgreSQL prune partitions.
///
/// The legs of a saga carry the saga's id but post later, on other shards, possibly much
/// later when a saga resumes after a crash: their window is open-ended (and starts a
/// little early, for clocks that differ between database servers).
fn posted_window(ledger_tx_id: Uuid) -> (DateTime<Utc>, DateTime<Utc>) {
    let millis = (ledger_tx_id.as_u128() >> 80) as i64;
    let start = DateTime::from_timestamp_millis(millis).unwrap_or_default();
    if is_saga_id(ledger_tx_id) {
        return (start - chrono::Duration::hours(1), DateTime::<Utc>::MAX_UTC);
    }
    (start, start + chrono::Duration::milliseconds(1))
}

pub async fn transaction_object(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ledger_tx_id: Uuid,
) -> Result<Option<TransactionObject>, StoreError> {
    let (from, to) = posted_window(ledger_tx_id);
    let row = sqlx::query(
        "select t.ledger_tx_id, t.tx_type, t.occurred_at, t.posted_at, t.created_by, t.business_ref, t.external_ref_type,
                t.external_ref, t.reason_code, t.metadata, t.reverses_ledger_tx_id, r.reversal_ledger_tx_id
         from ledger_transaction t
         left join ledger_reversal r on r.tenant_id = t.tenant_id and r.reversed_ledger_tx_id = t.ledger_tx_id
         where t.ledger_tx_id = $1 and t.tenant_id = $2 and t.posted_at >= $3 and t.posted_at < $4",
    )
    .bind(ledger_tx_id)
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let entries = entry_replies(conn, ledger_tx_id).await?;
    let reversed_by: Option<Uuid> = row.try_get("reversal_ledger_tx_id")?;
    Ok(Some(TransactionObject {
        ledger_tx_id,
        tx_type: row.try_get("tx_type")?,
        status: if reversed_by.is_some() { "REVERSED" } else { "POSTED" },
        entries,
        reverses_ledger_tx_id: row.try_get("reverses_ledger_tx_id")?,
        reversed_by_ledger_tx_id: reversed_by,
        occurred_at: row.try_get("occurred_at")?,
        posted_at: row.try_get("posted_at")?,
        actor: row.try_get("created_by")?,
        business_ref: row.try_get("business_ref")?,
        external_ref: external_ref(&row)?,
        reason_code: row.try_get("reason_code")?,
        metadata: row.try_get("metadata")?,
    }))
}

fn external_ref(row: &PgRow) -> Result<Option<ExternalRef>, StoreError> {
    let ref_type: Option<String> = row.try_get("external_ref_type")?;
    let reference: Option<String> = row.try_get("external_ref")?;
    Ok(ref_type.zip(reference).map(|(ref_type, reference)| ExternalRef { ref_type, reference }))
}

async fn entry_replies(conn: &mut PgConnection, ledger_tx_id: Uuid) -> Result<Vec<EntryReply>, StoreError> {
    let (from, to) = posted_window(ledger_tx_id);
    let rows = sqlx::query(
        "select ledger_entry_id, account_id, entry_side, amount_minor, currency_code, entry_seq, balance_after_minor
         from ledger_entry where ledger_tx_id = $1 and posted_at >= $2 and posted_at < $3 order by entry_seq",
    )
    .bind(ledger_tx_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(entry_reply).collect()
}

/// The reply a post or reversal gave, rebuilt from the journal for a replay.
pub async fn post_reply(conn: &mut PgConnection, tenant_id: Uuid, ledger_tx_id: Uuid) -> Result<Option<PostReply>, StoreError> {
    let (from, to) = posted_window(ledger_tx_id);
    let posted_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "select posted_at from ledger_transaction
         where ledger_tx_id = $1 and tenant_id = $4 and posted_at >= $2 and posted_at < $3",
    )
    .bind(ledger_tx_id)
    .bind(from)
    .bind(to)
    .bind(tenant_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(posted_at) = posted_at else { return Ok(None) };
    let entries = entry_replies(conn, ledger_tx_id).await?;
    Ok(Some(PostReply { ledger_tx_id, status: "POSTED", posted_at, replayed: true, entries }))
}

/// Where the transaction of an idempotency key is, as this shard knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    Transaction(Uuid),
    /// Claimed here for a request that this other shard decides.
    DecidedOn(u16),
    Nothing,
}

pub async fn lookup_key(conn: impl PgExecutor<'_>, tenant_id: Uuid, key: &str) -> Result<KeyLookup, StoreError> {
    let row: Option<(String, Option<Uuid>, Option<i32>)> = sqlx::query_as(
        "select status, ledger_tx_id, target_shard from ledger_idempotency where tenant_id = $1 and idempotency_key = $2",
    )
    .bind(tenant_id)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some((_, Some(tx), _)) => KeyLookup::Transaction(tx),
        Some((status, None, Some(target))) if status == "PROCESSING" => KeyLookup::DecidedOn(target as u16),
        _ => KeyLookup::Nothing,
    })
}

/// The transaction holding an external reference: posted here, or claimed here and bound.
pub async fn tx_id_by_external_ref(
    conn: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_ref: &ExternalRef,
) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "select ledger_tx_id from ledger_external_ref where tenant_id = $1 and external_ref_type = $2 and external_ref = $3
         union all
         select ledger_tx_id from ledger_external_ref_claim
         where tenant_id = $1 and external_ref_type = $2 and external_ref = $3 and ledger_tx_id is not null
         limit 1",
    )
    .bind(tenant_id)
    .bind(&external_ref.ref_type)
    .bind(&external_ref.reference)
    .fetch_optional(conn)
    .await?)
}

pub async fn statement(conn: impl PgExecutor<'_>, tenant_id: Uuid, query: &StatementQuery) -> Result<StatementReply, StoreError> {
    let rows = sqlx::query(
        "select e.ledger_entry_id, e.ledger_tx_id, t.tx_type, e.entry_side, e.amount_minor, e.currency_code,
                e.balance_after_minor, e.effective_at, e.posted_at, t.business_ref, t.external_ref_type, t.external_ref,
                e.commit_seq
         from ledger_entry e
         join ledger_transaction t on t.ledger_tx_id = e.ledger_tx_id and t.posted_at = e.posted_at
         where e.account_id = $1 and e.tenant_id = $2 and e.commit_seq > $3
           and ($4::timestamptz is null or e.posted_at >= $4)
           and ($5::timestamptz is null or e.posted_at < $5)
         order by e.commit_seq
         limit $6",
    )
    .bind(query.account_id)
    .bind(tenant_id)
    .bind(query.after_commit_seq.unwrap_or(0))
    .bind(query.from)
    .bind(query.to)
    .bind(query.limit as i64 + 1)
    .fetch_all(conn)
    .await?;
    let more = rows.len() > query.limit as usize;
    let mut entries = Vec::with_capacity(rows.len().min(query.limit as usize));
    let mut last_seq = None;
    for row in rows.iter().take(query.limit as usize) {
        last_seq = Some(row.try_get::<i64, _>("commit_seq")?);
        entries.push(StatementEntry {
            ledger_entry_id: row.try_get("ledger_entry_id")?,
            ledger_tx_id: row.try_get("ledger_tx_id")?,
            tx_type: row.try_get("tx_type")?,
            side: row.try_get("entry_side")?,
            amount_minor: row.try_get("amount_minor")?,
            currency: row.try_get("currency_code")?,
            balance_after_minor: row.try_get("balance_after_minor")?,
            effective_at: row.try_get("effective_at")?,
            posted_at: row.try_get("posted_at")?,
            business_ref: row.try_get("business_ref")?,
            external_ref: external_ref(row)?,
        });
    }
    Ok(StatementReply { entries, next_cursor: if more { last_seq.map(statement_cursor) } else { None } })
}

pub async fn account_exists(conn: impl PgExecutor<'_>, tenant_id: Uuid, account_id: Uuid) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("select exists(select 1 from ledger_account where account_id = $1 and tenant_id = $2)")
        .bind(account_id)
        .bind(tenant_id)
        .fetch_one(conn)
        .await?)
}

// ---- sagas and audit ---------------------------------------------------------------

/// Currency and type of the tenant's accounts that exist among `ids`.
pub async fn account_facts(
    conn: impl PgExecutor<'_>,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<ledger_protocol::internal::AccountFacts>, StoreError> {
    Ok(load_accounts(conn, ids)
        .await?
        .into_iter()
        .filter(|a| a.tenant_id == tenant_id)
        .map(|a| ledger_protocol::internal::AccountFacts {
            account_id: a.account_id,
            currency: a.currency.to_string(),
            account_type: a.account_type,
        })
        .collect())
}

/// Rewrites every balance row that differs from what its entries (and its held saga legs)
/// say, in the caller's transaction; the ids of the rows rewritten. A full scan, for an
/// operator repairing drift the audit found: the projection is derived state.
pub async fn rebuild_balances(conn: &mut PgConnection) -> Result<Vec<Uuid>, StoreError> {
    let corrected = sqlx::query_scalar(
        "with sums as (
             select account_id,
                    coalesce(sum(amount_minor) filter (where entry_side = 'DEBIT'), 0)::int8 as debits,
                    coalesce(sum(amount_minor) filter (where entry_side = 'CREDIT'), 0)::int8 as credits,
                    count(*) as entries
             from ledger_entry group by account_id
         ), last_entry as (
             select distinct on (account_id) account_id, ledger_entry_id
             from ledger_entry order by account_id, commit_seq desc, entry_seq desc
         ), held as (
             select e.account_id,
                    coalesce(sum(e.amount_minor) filter (where e.entry_side = 'DEBIT'), 0)::int8 as debits,
                    coalesce(sum(e.amount_minor) filter (where e.entry_side = 'CREDIT'), 0)::int8 as credits
             from ledger_saga_hold h join ledger_entry e on e.ledger_tx_id = h.saga_id
             group by e.account_id
         ), wanted as (
             select a.account_id,
                    coalesce(s.debits, 0) as debits, coalesce(s.credits, 0) as credits,
                    coalesce(s.entries, 0) as entries,
                    case when a.account_type in ('ASSET', 'EXPENSE') then coalesce(s.debits, 0) - coalesce(s.credits, 0)
                         else coalesce(s.credits, 0) - coalesce(s.debits, 0) end as balance,
                    l.ledger_entry_id as last_entry,
                    coalesce(h.debits, 0) as held_debits, coalesce(h.credits, 0) as held_credits
             from ledger_account a
             left join sums s on s.account_id = a.account_id
             left join last_entry l on l.account_id = a.account_id
             left join held h on h.account_id = a.account_id
         )
         update account_balance b
         set debits_minor = w.debits, credits_minor = w.credits, balance_minor = w.balance, version = w.entries,
             last_entry_id = w.last_entry, unsettled_debits_minor = w.held_debits,
             unsettled_credits_minor = w.held_credits, updated_at = now()
         from wanted w
         where b.account_id = w.account_id
           and (b.debits_minor, b.credits_minor, b.balance_minor, b.version, b.unsettled_debits_minor,
                b.unsettled_credits_minor, b.last_entry_id)
               is distinct from (w.debits, w.credits, w.balance, w.entries, w.held_debits, w.held_credits, w.last_entry)
         returning b.account_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(corrected)
}

/// What this shard's database proves about itself (`ledger.v1.admin.audit`). Full scans:
/// an operator's check, not a hot path.
pub async fn audit(conn: &mut PgConnection, shard_id: u16) -> Result<ledger_protocol::internal::ShardAudit, StoreError> {
    use ledger_protocol::internal::{ClearingTotal, CurrencyTotals, HeldLeg, SagaInFlight, ShardAudit};
    let accounts: i64 = sqlx::query_scalar("select count(*) from ledger_account").fetch_one(&mut *conn).await?;
    let transactions: i64 = sqlx::query_scalar("select count(*) from ledger_transaction").fetch_one(&mut *conn).await?;
    let projection_drift: Vec<Uuid> = sqlx::query_scalar(
        "select b.account_id
         from account_balance b
         join ledger_account a on a.account_id = b.account_id
         left join (select account_id,
                           sum(amount_minor) filter (where entry_side = 'DEBIT') as debits,
                           sum(amount_minor) filter (where entry_side = 'CREDIT') as credits,
                           count(*) as entries
                    from ledger_entry group by account_id) e on e.account_id = b.account_id
         where b.debits_minor <> coalesce(e.debits, 0) or b.credits_minor <> coalesce(e.credits, 0)
            or b.version <> coalesce(e.entries, 0)
            or b.balance_minor <> case when a.account_type in ('ASSET', 'EXPENSE')
                                       then coalesce(e.debits, 0) - coalesce(e.credits, 0)
                                       else coalesce(e.credits, 0) - coalesce(e.debits, 0) end
         order by b.account_id limit 100",
    )
    .fetch_all(&mut *conn)
    .await?;
    let unbalanced_transactions: Vec<Uuid> = sqlx::query_scalar(
        "select distinct ledger_tx_id from (
             select ledger_tx_id from ledger_entry group by ledger_tx_id, currency_code
             having sum(case when entry_side = 'DEBIT' then amount_minor else -amount_minor end) <> 0
         ) u order by ledger_tx_id limit 100",
    )
    .fetch_all(&mut *conn)
    .await?;
    let totals: Vec<(String, String, String)> = sqlx::query_as(
        "select currency_code::text,
                coalesce(sum(amount_minor) filter (where entry_side = 'DEBIT'), 0)::text,
                coalesce(sum(amount_minor) filter (where entry_side = 'CREDIT'), 0)::text
         from ledger_entry group by currency_code order by currency_code",
    )
    .fetch_all(&mut *conn)
    .await?;
    let totals = totals
        .into_iter()
        .map(|(currency, debits, credits)| {
            Ok(CurrencyTotals {
                currency,
                debits_minor: debits.parse().map_err(|_| corrupt("sum", &debits))?,
                credits_minor: credits.parse().map_err(|_| corrupt("sum", &credits))?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let clearing: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "select a.tenant_id, a.currency_code::text, sum(b.balance_minor)::int8
         from ledger_account a join account_balance b on b.account_id = a.account_id
         where a.account_code like '#clearing:%'
         group by a.tenant_id, a.currency_code order by 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let unsettled_drift: Vec<Uuid> = sqlx::query_scalar(
        "select b.account_id
         from account_balance b
         left join (select e.account_id,
                           sum(e.amount_minor) filter (where e.entry_side = 'DEBIT') as debits,
                           sum(e.amount_minor) filter (where e.entry_side = 'CREDIT') as credits
                    from ledger_saga_hold h join ledger_entry e on e.ledger_tx_id = h.saga_id
                    group by e.account_id) u on u.account_id = b.account_id
         where b.unsettled_debits_minor <> coalesce(u.debits, 0) or b.unsettled_credits_minor <> coalesce(u.credits, 0)
         order by b.account_id limit 100",
    )
    .fetch_all(&mut *conn)
    .await?;
    let held_legs: Vec<(Uuid, Uuid, i32, DateTime<Utc>)> =
        sqlx::query_as("select saga_id, tenant_id, step, created_at from ledger_saga_hold order by created_at limit 100")
            .fetch_all(&mut *conn)
            .await?;
    let sagas: Vec<(Uuid, Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "select saga_id, tenant_id, state, updated_at from ledger_saga
         where state in ('RUNNING', 'COMPENSATING') order by updated_at limit 100",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(ShardAudit {
        shard_id,
        accounts,
        transactions,
        projection_drift,
        unbalanced_transactions,
        totals,
        clearing: clearing
            .into_iter()
            .map(|(tenant_id, currency, balance_minor)| ClearingTotal { tenant_id, currency, balance_minor })
            .collect(),
        sagas_in_flight: sagas
            .into_iter()
            .map(|(saga_id, tenant_id, state, updated_at)| SagaInFlight { saga_id, tenant_id, state, updated_at })
            .collect(),
        held_legs: held_legs
            .into_iter()
            .map(|(saga_id, tenant_id, step, created_at)| HeldLeg { saga_id, tenant_id, step, created_at })
            .collect(),
        unsettled_drift,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::batch::KeyRow;

    fn key_row(status: KeyStatus) -> KeyRow {
        KeyRow {
            tenant_id: Uuid::nil(),
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            status,
            target_shard: None,
            ledger_tx_id: None,
            response_status: 0,
            response_body: None,
            created_at: Utc::now(),
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn the_batch_statement_keeps_only_the_parts_a_batch_has_rows_for() {
        let nothing = batch_statement(&Writes::default());
        assert!(nothing.starts_with("with guard as ("), "{nothing}");
        assert!(!nothing.contains("insert into"), "an empty batch writes only the watermark: {nothing}");
        assert!(nothing.contains("ledger_require_new_keys($62, 0, $63)"), "{nothing}");

        let mut writes = Writes::default();
        writes.keys.push(key_row(KeyStatus::Succeeded));
        writes.holds_settled.push(Uuid::nil());
        let some = batch_statement(&writes);
        for part in ["guard as (", "keys as (", "holds_settled as ("] {
            assert!(some.contains(part), "{part} missing: {some}");
        }
        for part in ["released_keys as (", "transactions as (", "sagas as (", "holds_opened as ("] {
            assert!(!some.contains(part), "{part} present: {some}");
        }
        assert!(some.contains("(select count(*) from keys)"), "{some}");
        // the same parts give the same statement text, so the connection prepares it once
        assert!(std::ptr::eq(some, batch_statement(&writes)));

        writes.keys.push(key_row(KeyStatus::FailedRetryable));
        assert!(batch_statement(&writes).contains("released_keys as ("));
    }

    #[test]
    fn every_part_of_the_batch_statement_is_known() {
        let names: Vec<&str> = batch_statement_parts().iter().map(|(name, _)| *name).collect();
        assert_eq!(names.first(), Some(&"guard"));
        assert_eq!(names.last(), Some(&"final"));
        assert_eq!(names.len(), 13, "{names:?}");
        // batch_statement asks about every part, and panics at a name it does not know
        let _ = batch_statement(&Writes::default());
    }
}
