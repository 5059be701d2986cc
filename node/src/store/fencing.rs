//! Claiming a shard database: migrations, partitions, the writer's advisory-lock fence
//! and the watermark every batch write moves.

use super::*;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{PgExecutor, Row};

/// Brings a shard database to the current schema and claims it for `shard_id`.
pub async fn prepare_shard(conn: &mut PgConnection, shard_id: u16) -> Result<(), StoreError> {
    MIGRATOR.run_direct(None, &mut *conn, false).await?;
    sqlx::query(include_str!("sql/fencing/ensure_partitions.sql")).bind(PARTITION_MONTHS_AHEAD).execute(&mut *conn).await?;
    sqlx::query(include_str!("sql/fencing/claim_shard.sql")).bind(shard_id as i32).execute(&mut *conn).await?;
    let found: i32 = sqlx::query_scalar(include_str!("sql/fencing/shard_owner.sql")).fetch_one(&mut *conn).await?;
    if found != shard_id as i32 {
        return Err(StoreError::WrongShard { expected: shard_id, found });
    }
    Ok(())
}

/// Makes the writer's session reuse one plan per statement. Left to itself PostgreSQL
/// re-plans the batch statement on every execution (its cost estimates favour plans made
/// for the actual arrays), and planning a dozen data-modifying CTEs cost about as much
/// as running them for the few commands of a batch at moderate load (0.7 ms of 1.8 ms,
/// pg_stat_statements; docs/BENCHMARKS.md, "Generic plans for the batch statement"). The
/// generic plan's index lookups suit every batch size the writer makes.
pub async fn use_generic_plans(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(include_str!("sql/fencing/use_generic_plans.sql")).execute(conn).await?;
    Ok(())
}

/// Key of the session advisory lock that fences a shard's writer.
pub fn fence_lock_key(shard_id: u16) -> i64 {
    0x4c45_4447_0000_0000 | shard_id as i64
}

/// Takes the shard's writer fence on this connection; false if another session holds it.
pub async fn try_fence(conn: &mut PgConnection, shard_id: u16) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/fencing/try_fence.sql")).bind(fence_lock_key(shard_id)).fetch_one(conn).await?)
}

#[derive(Debug, Clone, Copy)]
pub struct Watermark {
    pub last_commit_seq: i64,
    pub last_posted_at: Option<DateTime<Utc>>,
    /// The last outbox event's number (gap-free per shard, in commit order).
    pub last_event_seq: i64,
}

pub async fn watermark(conn: impl PgExecutor<'_>) -> Result<Watermark, StoreError> {
    let row = sqlx::query(include_str!("sql/fencing/watermark.sql")).fetch_one(conn).await?;
    Ok(Watermark { last_commit_seq: row.try_get(0)?, last_posted_at: row.try_get(1)?, last_event_seq: row.try_get(2)? })
}

/// Locks the watermark row for the caller's transaction and reads its commit sequence: a
/// writer that finds another value than its own has been fenced off.
pub async fn lock_watermark(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/fencing/lock_watermark.sql")).fetch_one(conn).await?)
}
