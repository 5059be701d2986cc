//! Saga logs on their home shard, and the claims a sweeper resumes.

use super::*;
use ledger_core::command::ExternalRef;
use ledger_core::saga::{SagaKind, SagaRecord, SagaState};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{PgExecutor, Row};
use std::collections::HashMap;
use uuid::Uuid;

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
    let rows = sqlx::query(include_str!("sql/sagas/load_sagas.sql")).bind(ids).fetch_all(conn).await?;
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
    let keys: Vec<(Uuid, String, String, i32)> = sqlx::query_as(include_str!("sql/sagas/stale_key_claims.sql"))
        .bind(idle_ms as f64)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    let refs: Vec<(Uuid, String, String, String, Option<String>)> =
        sqlx::query_as(include_str!("sql/sagas/stale_ref_claims.sql"))
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
    let row = sqlx::query(include_str!("sql/sagas/saga.sql")).bind(saga_id).bind(tenant_id).fetch_optional(conn).await?;
    row.as_ref().map(saga_record).transpose()
}

/// Sagas not finished whose log has not moved for `idle_ms`: the ones to resume.
pub async fn sagas_in_flight(conn: impl PgExecutor<'_>, idle_ms: i64, limit: i64) -> Result<Vec<SagaRecord>, StoreError> {
    let rows =
        sqlx::query(include_str!("sql/sagas/sagas_in_flight.sql")).bind(idle_ms as f64).bind(limit).fetch_all(conn).await?;
    rows.iter().map(saga_record).collect()
}
