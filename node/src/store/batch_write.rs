//! The batch write: one set-based statement per batch (`sql/batch_write/write_batch.sql`),
//! preceded by the rare rows (new accounts, status changes, reference claims), and its
//! failures told apart by SQLSTATE and constraint name.

use super::*;
use ledger_core::account::AccountState;
use ledger_core::batch::{KeyStatus, Snapshot, Writes};
use ledger_core::saga::SagaKind;
use sqlx::postgres::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

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

/// The parts of `sql/batch_write/write_batch.sql` in order, each `(name, text)`.
fn batch_statement_parts() -> &'static [(&'static str, &'static str)] {
    static PARTS: std::sync::OnceLock<Vec<(&'static str, &'static str)>> = std::sync::OnceLock::new();
    PARTS.get_or_init(|| {
        include_str!("sql/batch_write/write_batch.sql")
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
    sqlx::query(include_str!("sql/batch_write/insert_accounts.sql"))
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
    sqlx::query(include_str!("sql/batch_write/insert_account_balances.sql"))
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
        sqlx::query(include_str!("sql/batch_write/set_account_status.sql"))
            .bind(change.account_id)
            .bind(change.to.as_str())
            .bind(change.changed_at)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(include_str!("sql/batch_write/insert_status_changes.sql"))
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
        sqlx::query(include_str!("sql/batch_write/upsert_ref_claims.sql"))
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
        sqlx::query(include_str!("sql/batch_write/delete_released_ref_claims.sql"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
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
