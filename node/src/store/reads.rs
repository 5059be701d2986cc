//! Reads for the router: accounts, transactions, statements, key and reference lookups.

use super::*;
use chrono::{DateTime, Utc};
use ledger_core::command::ExternalRef;
use ledger_core::ids::is_saga_id;
use ledger_core::money::Side;
use ledger_protocol::internal::StatementQuery;
use ledger_protocol::reply::{
    AccountObject, BalanceObject, EntryReply, PostReply, StatementEntry, StatementReply, TransactionObject, TxStatus,
};
use ledger_protocol::request::statement_cursor;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

pub async fn account_object(
    conn: impl PgExecutor<'_>,
    tenant_id: Uuid,
    account_id: Uuid,
) -> Result<Option<AccountObject>, StoreError> {
    let row =
        sqlx::query(include_str!("sql/reads/account_object.sql")).bind(account_id).bind(tenant_id).fetch_optional(conn).await?;
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
        side: Side::parse(&side).ok_or_else(|| corrupt("side", &side))?,
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
    let row = sqlx::query(include_str!("sql/reads/transaction_object.sql"))
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
        status: if reversed_by.is_some() { TxStatus::Reversed } else { TxStatus::Posted },
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
    let rows = sqlx::query(include_str!("sql/reads/entry_replies.sql"))
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
    let posted_at: Option<DateTime<Utc>> = sqlx::query_scalar(include_str!("sql/reads/post_reply.sql"))
        .bind(ledger_tx_id)
        .bind(from)
        .bind(to)
        .bind(tenant_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(posted_at) = posted_at else { return Ok(None) };
    let entries = entry_replies(conn, ledger_tx_id).await?;
    Ok(Some(PostReply { ledger_tx_id, status: TxStatus::Posted, posted_at, replayed: true, entries }))
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
    let row: Option<(String, Option<Uuid>, Option<i32>)> =
        sqlx::query_as(include_str!("sql/reads/lookup_key.sql")).bind(tenant_id).bind(key).fetch_optional(conn).await?;
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
    Ok(sqlx::query_scalar(include_str!("sql/reads/tx_id_by_external_ref.sql"))
        .bind(tenant_id)
        .bind(&external_ref.ref_type)
        .bind(&external_ref.reference)
        .fetch_optional(conn)
        .await?)
}

pub async fn statement(conn: impl PgExecutor<'_>, tenant_id: Uuid, query: &StatementQuery) -> Result<StatementReply, StoreError> {
    let rows = sqlx::query(include_str!("sql/reads/statement.sql"))
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
    Ok(sqlx::query_scalar(include_str!("sql/reads/account_exists.sql")).bind(account_id).bind(tenant_id).fetch_one(conn).await?)
}

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
