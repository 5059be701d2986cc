//! What an operator checks and repairs: the shard's audit and the balance rebuild.

use super::*;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

/// Rewrites every balance row that differs from what its entries (and its held saga legs)
/// say, in the caller's transaction; the ids of the rows rewritten. A full scan, for an
/// operator repairing drift the audit found: the projection is derived state.
pub async fn rebuild_balances(conn: &mut PgConnection) -> Result<Vec<Uuid>, StoreError> {
    let corrected = sqlx::query_scalar(include_str!("sql/audit/rebuild_balances.sql")).fetch_all(&mut *conn).await?;
    Ok(corrected)
}

/// What this shard's database proves about itself (`ledger.v1.admin.audit`). Full scans:
/// an operator's check, not a hot path.
pub async fn audit(conn: &mut PgConnection, shard_id: u16) -> Result<ledger_protocol::internal::ShardAudit, StoreError> {
    use ledger_protocol::internal::{ClearingTotal, CurrencyTotals, HeldLeg, SagaInFlight, ShardAudit};
    let accounts: i64 = sqlx::query_scalar(include_str!("sql/audit/account_count.sql")).fetch_one(&mut *conn).await?;
    let transactions: i64 = sqlx::query_scalar(include_str!("sql/audit/transaction_count.sql")).fetch_one(&mut *conn).await?;
    let projection_drift: Vec<Uuid> =
        sqlx::query_scalar(include_str!("sql/audit/projection_drift.sql")).fetch_all(&mut *conn).await?;
    let unbalanced_transactions: Vec<Uuid> =
        sqlx::query_scalar(include_str!("sql/audit/unbalanced_transactions.sql")).fetch_all(&mut *conn).await?;
    let totals: Vec<(String, String, String)> =
        sqlx::query_as(include_str!("sql/audit/currency_totals.sql")).fetch_all(&mut *conn).await?;
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
    let clearing: Vec<(Uuid, String, i64)> =
        sqlx::query_as(include_str!("sql/audit/clearing_totals.sql")).fetch_all(&mut *conn).await?;
    let unsettled_drift: Vec<Uuid> =
        sqlx::query_scalar(include_str!("sql/audit/unsettled_drift.sql")).fetch_all(&mut *conn).await?;
    let held_legs: Vec<(Uuid, Uuid, i32, DateTime<Utc>)> =
        sqlx::query_as(include_str!("sql/audit/held_legs.sql")).fetch_all(&mut *conn).await?;
    let sagas: Vec<(Uuid, Uuid, String, DateTime<Utc>)> =
        sqlx::query_as(include_str!("sql/audit/sagas_in_flight.sql")).fetch_all(&mut *conn).await?;
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
