//! The outbox as the relay reads it: the cursor of what JetStream has acknowledged, the
//! events after it, and moving the cursor on.

use super::*;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// An outbox row: the event less what its columns say (`ledger_core::outbox_form`).
pub struct StoredEvent {
    pub event_seq: i64,
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub payload: Value,
}

/// The last event JetStream acknowledged.
pub async fn outbox_cursor(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/outbox/cursor.sql")).fetch_one(pool).await?)
}

/// Up to `limit` events after `cursor`, in commit order. The cursor is read first and
/// bound as a value: joined in, the planner would walk the `event_seq` index from the
/// very first event on every round.
pub async fn outbox_events(pool: &PgPool, cursor: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query(include_str!("sql/outbox/events_after.sql")).bind(cursor).bind(limit).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let payload: &str = row.try_get(6)?;
            Ok(StoredEvent {
                event_seq: row.try_get(0)?,
                event_id: row.try_get(1)?,
                tenant_id: row.try_get(2)?,
                event_type: row.try_get(3)?,
                aggregate_type: row.try_get(4)?,
                aggregate_id: row.try_get(5)?,
                payload: serde_json::from_str(payload).map_err(|e| corrupt("outbox payload", &e.to_string()))?,
            })
        })
        .collect()
}

/// Moves the cursor to `event_seq`, never back.
pub async fn advance_outbox_cursor(pool: &PgPool, event_seq: i64) -> Result<(), StoreError> {
    sqlx::query(include_str!("sql/outbox/advance_cursor.sql")).bind(event_seq).execute(pool).await?;
    Ok(())
}
