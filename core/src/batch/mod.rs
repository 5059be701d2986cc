//! Batch planning: the pure core of group commit.
//!
//! A shard writer collects commands into a batch, prefetches what they need into a
//! [`Snapshot`] (account states, idempotency records, external-reference claims, the
//! transactions to be reversed), and calls [`plan_batch`]. Commands are decided in
//! order, each against the state the earlier ones left, and a refused command never
//! affects its neighbours. The plan holds one [`Outcome`] per command and the [`Writes`]
//! that make the accepted ones durable; the shell writes them in one database
//! transaction and only then lets the new state replace its cache.
//!
//! One module per concern, each adding its commands' methods to the `Planner`:
//! [`outcome`] (what a command's decision is and what the planner reads),
//! [`rows`] (what it writes), `accounts`, `keys` (idempotency keys and external-reference
//! claims), `post`, `reverse` and `saga_legs`. A new command is a new module and one arm
//! in `Planner::decide`.

mod accounts;
mod keys;
pub mod outcome;
mod post;
#[cfg(test)]
mod properties;
mod reverse;
pub mod rows;
mod saga_legs;
#[cfg(test)]
mod testkit;

pub use outcome::*;
pub use rows::*;

use crate::account::{AccountState, EntryEffect};
use crate::command::{Command, EntryCommand, ExternalRef};
use crate::error_code::ErrorCode;
use crate::ids::IdSource;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub const TX_TYPE_REVERSAL: &str = "REVERSAL";

/// How long an idempotency key is remembered (docs/PROTOCOL.md: at least 7 days).
pub const IDEMPOTENCY_KEY_RETENTION_DAYS: i64 = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    pub outcomes: Vec<Outcome>,
    pub writes: Writes,
    pub next_commit_seq: i64,
}

/// Decides every command of a batch in order. `snapshot` is updated to the state after
/// the batch; the caller must discard it if the writes do not commit.
pub fn plan_batch(input: BatchInput, snapshot: &mut Snapshot, commands: &[Command], ids: &mut impl IdSource) -> BatchPlan {
    let mut planner = Planner { input, snapshot, ids, writes: Writes::default(), next_commit_seq: input.next_commit_seq };
    let outcomes = commands
        .iter()
        .map(|command| match crate::recheck::command(command, input.shard_id) {
            Err(rejection) => Outcome::Rejected(rejection),
            Ok(()) => planner.decide(command),
        })
        .collect();
    let mut writes = planner.writes;
    keep_last_by(&mut writes.keys, |row| (row.tenant_id, row.idempotency_key.clone()));
    keep_last_by(&mut writes.ref_claims, |row| (row.tenant_id, row.external_ref.clone()));
    keep_last_by(&mut writes.sagas, |row| row.saga_id);
    BatchPlan { outcomes, writes, next_commit_seq: planner.next_commit_seq }
}

impl<I: IdSource> Planner<'_, I> {
    /// Decides one command that passed [`crate::recheck::command`].
    fn decide(&mut self, command: &Command) -> Outcome {
        match command {
            Command::CreateAccount(c) => self.create_account(c),
            Command::SetStatus(c) => self.set_status(c),
            Command::Post(c) => self.post(c),
            Command::Reverse(c) => self.reverse(c),
            Command::ClaimKey(c) => self.claim_key(c),
            Command::CompleteKey(c) => self.complete_key(c),
            Command::ClaimRef(c) => self.claim_ref(c),
            Command::CompleteRef(c) => self.complete_ref(c),
            Command::BeginSaga(c) => self.begin_saga(c),
            Command::SagaProgress(c) => self.saga_progress(c),
            Command::SagaStep(c) => self.saga_step(c),
            Command::AbandonKey(c) => self.abandon_key(c),
        }
    }
}

/// Whether a refusal with this status and body is remembered under its key (docs/PROTOCOL.md:
/// 409 and 422, except the refusals that concern the key itself).
pub fn rejection_is_stored(status: u16, body: &Value) -> bool {
    let code = body.pointer("/error/code").and_then(Value::as_str).and_then(ErrorCode::parse);
    matches!(status, 409 | 422) && !matches!(code, Some(ErrorCode::IdempotencyConflict | ErrorCode::InProgress))
}

/// Keeps the last row for each key, in order: one set-based upsert may touch a row once.
fn keep_last_by<T, K: std::hash::Hash + Eq>(rows: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let mut kept: Vec<T> = Vec::with_capacity(rows.len());
    for row in rows.drain(..).rev() {
        if seen.insert(key(&row)) {
            kept.push(row);
        }
    }
    kept.reverse();
    *rows = kept;
}

struct Planner<'a, I: IdSource> {
    input: BatchInput,
    snapshot: &'a mut Snapshot,
    ids: &'a mut I,
    writes: Writes,
    next_commit_seq: i64,
}

/// A transaction that passed every check, ready to be written.
struct Accepted<'c> {
    tenant_id: Uuid,
    idempotency_key: &'c str,
    fingerprint: &'c str,
    tx_type: &'c str,
    entries: &'c [EntryCommand],
    /// The entries' `entry_seq`s; empty for 1..=n.
    entry_seqs: &'c [i32],
    /// The id a saga leg shares with its saga; `None` mints one.
    ledger_tx_id: Option<Uuid>,
    effects: Vec<EntryEffect>,
    external_ref: Option<&'c ExternalRef>,
    business_ref: Option<&'c String>,
    occurred_at: Option<DateTime<Utc>>,
    actor: &'c str,
    reason_code: Option<&'c String>,
    metadata: Value,
    reverses_ledger_tx_id: Option<Uuid>,
    /// A saga leg posted held: its step.
    held_step: Option<usize>,
}

impl<I: IdSource> Planner<'_, I> {
    fn now(&self) -> DateTime<Utc> {
        self.input.now
    }

    fn tenant_account(&self, tenant_id: Uuid, account_id: Uuid) -> Option<&AccountState> {
        self.snapshot.accounts.get(&account_id).filter(|a| a.tenant_id == tenant_id)
    }
}
