//! What the writer reads before it plans a batch: accounts, keys, external-reference
//! holders and the transactions to be reversed.

use super::*;
use ledger_core::account::{AccountState, AccountStatus};
use ledger_core::batch::{KeyOutcome, KeyRecord, OriginalTx, RefClaim};
use ledger_core::command::{EntryCommand, ExternalRef};
use ledger_core::currency::Currency;
use ledger_core::fingerprint::attributes_digest;
use ledger_core::money::{AccountType, Side};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{PgExecutor, Row};
use std::collections::HashMap;
use uuid::Uuid;

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
    let rows = sqlx::query(include_str!("sql/prefetch/load_accounts.sql")).bind(ids).fetch_all(conn).await?;
    rows.iter().map(account_state).collect()
}

pub async fn load_keys(
    conn: impl PgExecutor<'_>,
    keys: &[(Uuid, String)],
) -> Result<HashMap<(Uuid, String), KeyRecord>, StoreError> {
    let tenants: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows = sqlx::query(include_str!("sql/prefetch/load_keys.sql")).bind(&tenants).bind(&names).fetch_all(conn).await?;
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
    let rows = sqlx::query(include_str!("sql/prefetch/load_ref_holders.sql"))
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
    let rows = sqlx::query(include_str!("sql/prefetch/originals.sql")).bind(ids).fetch_all(&mut *conn).await?;
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
    let entries = sqlx::query(include_str!("sql/prefetch/original_entries.sql")).bind(&found).fetch_all(&mut *conn).await?;
    for row in &entries {
        let id: Uuid = row.try_get("ledger_tx_id")?;
        let original = originals.get_mut(&id).expect("selected above");
        original.entries.push(entry_command(row)?);
        original.seqs.push(row.try_get("entry_seq")?);
    }
    Ok(originals)
}
