//! Cross-shard transactions as sagas: the pure part.
//!
//! A transaction whose accounts live on several shards is split into one *leg* per shard.
//! Each leg is balanced on its own by entries on that shard's clearing account (one per
//! tenant and currency, a system account that may go negative), so every shard's journal
//! stays balanced and the clearing accounts of all shards sum to zero once no saga is in
//! flight. Every leg of one saga carries the same `ledger_tx_id` (the saga id, which the
//! client sees), in its own shard's database.
//!
//! The saga log ([`SagaRecord`]) lives on the home shard of the request's idempotency key
//! and is written before the first leg. The coordinator is a loop around
//! [`SagaRecord::next_action`]: do the next pending step; when a step is refused, undo
//! the posted steps in reverse order; then finish. Every step and every undo is
//! idempotent by (saga id, step) on the shard that executes it ([`step_key`],
//! [`undo_key`]), and a step's refusal is stored there too, so a coordinator that
//! resumes after a crash re-sends steps and gets the same answers: any number of
//! coordinators reach the same end.
//!
//! `legs` splits a transaction into legs and balances each through its shard's clearing
//! account; `cross_shard` decides what a cross-shard request becomes before its saga
//! opens, and what its external reference's home learns when it ends; `coordinator` is
//! the coordinator as a pure step over the log, executed by the router; `reply` is the
//! client's reply a saga stores when it ends.

use crate::command::{EntryCommand, ExternalRef};
use crate::currency::Currency;
use crate::money::{AccountType, Side};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

mod coordinator;
mod cross_shard;
mod legs;
mod reply;

pub use coordinator::*;
pub use cross_shard::*;
pub use legs::*;
pub use reply::*;

pub const TX_TYPE_SAGA_COMPENSATION: &str = "SAGA_COMPENSATION";

/// The idempotency key under which a leg shard records step `step` of `saga_id`. The unit
/// separator keeps it out of the client key space (client keys are printable ASCII).
pub fn step_key(saga_id: Uuid, step: usize) -> String {
    format!("\u{1f}saga:{}:{step}", saga_id.hyphenated())
}

/// The idempotency key of the undo (compensation) of step `step` of `saga_id`.
pub fn undo_key(saga_id: Uuid, step: usize) -> String {
    format!("\u{1f}saga:{}:{step}:undo", saga_id.hyphenated())
}

/// A client entry in a leg, with its position in the client's request (1-based), which
/// becomes its `entry_seq` in the leg: the legs' entries together number 1..=n.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegEntry {
    pub seq: i32,
    #[serde(flatten)]
    pub entry: EntryCommand,
}

/// What one step does on its shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepAction {
    /// Post these client entries plus the clearing entries that balance them.
    Post { entries: Vec<LegEntry> },
    /// Mark saga transaction `of` (whose log is on this shard) as reversed by this saga.
    ClaimReversal { of: Uuid },
    /// Post the mirror of this shard's leg of saga transaction `of` (a reversal leg).
    Mirror { of: Uuid },
}

impl StepAction {
    /// Whether the step posts a leg (entries on its shard).
    pub fn posts_leg(&self) -> bool {
        matches!(self, StepAction::Post { .. } | StepAction::Mirror { .. })
    }
}

/// A step as the saga's plan fixes it when the saga opens: where it runs and what it does.
/// A forward step carries the whole plan, so that the shard executing it can check that
/// its leg is one part of a balanced transaction ([`crate::recheck`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub shard: u16,
    #[serde(flatten)]
    pub action: StepAction,
}

/// Which part of a step a shard is asked to execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Run the step.
    Forward,
    /// Undo it: compensate its leg (or release its reversal claim), or, if it never ran,
    /// make sure it never will.
    Undo,
    /// The saga posted: settle the step's held leg (see [`crate::account::Unsettled`]).
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    Pending,
    Posted,
    Rejected,
    Compensated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaStep {
    pub shard: u16,
    #[serde(flatten)]
    pub action: StepAction,
    pub status: StepStatus,
    /// Sends of this step and its undo, over every coordinator that drove the saga.
    pub attempts: u32,
    /// The compensating transaction, once the step was undone by a posting.
    pub compensation_tx_id: Option<Uuid>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl SagaStep {
    pub fn new(shard: u16, action: StepAction) -> SagaStep {
        SagaStep { shard, action, status: StepStatus::Pending, attempts: 0, compensation_tx_id: None, updated_at: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaState {
    Running,
    Compensating,
    Posted,
    Compensated,
}

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "RUNNING",
            SagaState::Compensating => "COMPENSATING",
            SagaState::Posted => "POSTED",
            SagaState::Compensated => "COMPENSATED",
        }
    }

    pub fn parse(text: &str) -> Option<SagaState> {
        match text {
            "RUNNING" => Some(SagaState::Running),
            "COMPENSATING" => Some(SagaState::Compensating),
            "POSTED" => Some(SagaState::Posted),
            "COMPENSATED" => Some(SagaState::Compensated),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, SagaState::Posted | SagaState::Compensated)
    }
}

/// The refused step that turned the saga around, with the refusal as its shard gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaFailure {
    /// `None` when the saga was refused before any step (its external reference is taken).
    pub step: Option<usize>,
    pub status: u16,
    pub body: Value,
}

impl SagaFailure {
    /// The code of the refusal, read from its stored body.
    pub fn code(&self) -> Option<crate::error_code::ErrorCode> {
        self.body.pointer("/error/code").and_then(Value::as_str).and_then(crate::error_code::ErrorCode::parse)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SagaKind {
    Post,
    Reverse { of: Uuid },
}

/// What every leg's journal row repeats from the client's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegHeader {
    pub tx_type: String,
    pub actor: String,
    pub reason_code: Option<String>,
    pub business_ref: Option<String>,
    pub external_ref: Option<ExternalRef>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub metadata: Value,
    /// The number of client entries (the legs' clearing entries are numbered after them).
    pub entry_count: usize,
}

/// The durable saga log of one cross-shard transaction (table `ledger_saga`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    pub saga_id: Uuid,
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    #[serde(flatten)]
    pub kind: SagaKind,
    pub header: LegHeader,
    pub steps: Vec<SagaStep>,
    pub state: SagaState,
    pub failure: Option<SagaFailure>,
    /// The client's reply once the saga is terminal (a post reply, or the refusal).
    pub reply: Option<Value>,
    /// The reversal saga that claimed this (posted) transaction, if any.
    pub reversed_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SagaRecord {
    /// The log of a saga about to open: running, nothing done. The home shard gives it
    /// its id and times when it opens it.
    pub fn draft(
        tenant_id: Uuid,
        idempotency_key: &str,
        fingerprint: &str,
        kind: SagaKind,
        header: LegHeader,
        steps: Vec<SagaStep>,
        now: DateTime<Utc>,
    ) -> SagaRecord {
        SagaRecord {
            saga_id: Uuid::nil(),
            tenant_id,
            idempotency_key: idempotency_key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            kind,
            header,
            steps,
            state: SagaState::Running,
            failure: None,
            reply: None,
            reversed_by: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// What the coordinator does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAction {
    Do(usize),
    Undo(usize),
    FinishPosted,
    FinishCompensated,
}

/// How a shard answered a step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    Posted,
    Refused { status: u16, body: Value },
}

impl SagaRecord {
    /// `None` once terminal.
    pub fn next_action(&self) -> Option<NextAction> {
        match self.state {
            SagaState::Posted | SagaState::Compensated => None,
            SagaState::Running => Some(
                self.steps.iter().position(|s| s.status == StepStatus::Pending).map_or(NextAction::FinishPosted, NextAction::Do),
            ),
            SagaState::Compensating => Some(
                self.steps
                    .iter()
                    .rposition(|s| s.status == StepStatus::Posted)
                    .map_or(NextAction::FinishCompensated, NextAction::Undo),
            ),
        }
    }

    pub fn record_step(&mut self, step: usize, result: StepResult, now: DateTime<Utc>) {
        if self.state != SagaState::Running || self.steps[step].status != StepStatus::Pending {
            return;
        }
        let target = &mut self.steps[step];
        target.updated_at = Some(now);
        match result {
            StepResult::Posted => target.status = StepStatus::Posted,
            StepResult::Refused { status, body } => {
                target.status = StepStatus::Rejected;
                self.state = SagaState::Compensating;
                self.failure = Some(SagaFailure { step: Some(step), status, body });
            }
        }
        self.updated_at = now;
    }

    /// Turns a running saga back for a reason outside its steps.
    pub fn refuse(&mut self, status: u16, body: Value, now: DateTime<Utc>) {
        if self.state != SagaState::Running {
            return;
        }
        self.state = SagaState::Compensating;
        self.failure = Some(SagaFailure { step: None, status, body });
        self.updated_at = now;
    }

    pub fn record_undo(&mut self, step: usize, compensation_tx_id: Option<Uuid>, now: DateTime<Utc>) {
        if self.state != SagaState::Compensating || self.steps[step].status != StepStatus::Posted {
            return;
        }
        let target = &mut self.steps[step];
        target.status = StepStatus::Compensated;
        target.compensation_tx_id = compensation_tx_id;
        target.updated_at = Some(now);
        self.updated_at = now;
    }

    pub fn finish(&mut self, reply: Value, now: DateTime<Utc>) {
        match self.next_action() {
            Some(NextAction::FinishPosted) => self.state = SagaState::Posted,
            Some(NextAction::FinishCompensated) => self.state = SagaState::Compensated,
            _ => return,
        }
        self.reply = Some(reply);
        self.updated_at = now;
    }

    pub fn count_attempt(&mut self, step: usize) {
        self.steps[step].attempts = self.steps[step].attempts.saturating_add(1);
    }

    /// Whether `newer` may replace this record: the state and every step only move
    /// forward, and a terminal record never changes again (except its reversal claim,
    /// which [`crate::batch`] changes through its own command).
    ///
    /// What the saga does is fixed when it opens: its tenant, key, fingerprint, kind, the
    /// header fields its legs post with, and each step's shard and action. A record that
    /// changes any of them is not progress, whoever sends it.
    pub fn accepts_progress(&self, newer: &SagaRecord) -> bool {
        let (old, new) = (&self.header, &newer.header);
        let same_header = (&old.tx_type, &old.actor, &old.reason_code, &old.business_ref, &old.external_ref, old.entry_count)
            == (&new.tx_type, &new.actor, &new.reason_code, &new.business_ref, &new.external_ref, new.entry_count);
        !self.state.is_terminal()
            && newer.saga_id == self.saga_id
            && (newer.tenant_id, &newer.idempotency_key, &newer.fingerprint, &newer.kind)
                == (self.tenant_id, &self.idempotency_key, &self.fingerprint, &self.kind)
            && same_header
            && newer.state >= self.state
            && newer.steps.len() == self.steps.len()
            && self
                .steps
                .iter()
                .zip(&newer.steps)
                .all(|(old, new)| new.status >= old.status && new.shard == old.shard && new.action == old.action)
            && newer.is_consistent()
    }

    /// A terminal state agrees with its steps: a posted saga posted every step, a
    /// compensated one has none left posted.
    pub fn is_consistent(&self) -> bool {
        match self.state {
            SagaState::Posted => self.steps.iter().all(|s| s.status == StepStatus::Posted),
            SagaState::Compensated => self.steps.iter().all(|s| s.status != StepStatus::Posted),
            SagaState::Running | SagaState::Compensating => true,
        }
    }

    /// The plan: each step's shard and action.
    pub fn plan(&self) -> Vec<PlannedStep> {
        self.steps.iter().map(|s| PlannedStep { shard: s.shard, action: s.action.clone() }).collect()
    }

    /// Whether step `step` posts its leg held. Every leg but the last is held: until the
    /// saga has posted, a leg may still have to be compensated, so what it brought into
    /// an account must not be spent and the account must not be closed. Once the last
    /// leg posts, the saga cannot turn back (every earlier step posted, the reference is
    /// claimed), so the last leg is final at once.
    pub fn holds(&self, step: usize) -> bool {
        holds_step(self.steps.iter().map(|s| &s.action), step)
    }

    /// The leg steps (those that post entries), in step order.
    pub fn leg_steps(&self) -> impl Iterator<Item = (usize, &SagaStep)> {
        self.steps.iter().enumerate().filter(|(_, s)| s.action.posts_leg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(steps: usize) -> SagaRecord {
        let header = LegHeader {
            tx_type: "T".into(),
            actor: "a".into(),
            reason_code: None,
            business_ref: None,
            external_ref: None,
            occurred_at: None,
            metadata: Value::Null,
            entry_count: 2,
        };
        let steps = (0..steps).map(|i| SagaStep::new(i as u16, StepAction::Post { entries: vec![] })).collect();
        let now = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        SagaRecord {
            saga_id: Uuid::from_u128(1),
            ..SagaRecord::draft(Uuid::from_u128(2), "k", "f", SagaKind::Post, header, steps, now)
        }
    }

    #[test]
    fn progress_moves_forward_only_and_never_changes_what_the_saga_does() {
        let stored = record(2);
        let mut forward = stored.clone();
        forward.record_step(0, StepResult::Posted, Utc::now());
        assert!(stored.accepts_progress(&forward));
        assert!(!forward.accepts_progress(&stored), "backwards");
        let changed: Vec<fn(&mut SagaRecord)> = vec![
            |r| r.tenant_id = Uuid::from_u128(3),
            |r| r.idempotency_key = "other".into(),
            |r| r.fingerprint = "other".into(),
            |r| r.kind = SagaKind::Reverse { of: Uuid::nil() },
            |r| r.header.actor = "someone else".into(),
            |r| r.header.entry_count = 3,
            |r| r.steps[1].shard = 9,
            |r| r.steps[1].action = StepAction::Mirror { of: Uuid::nil() },
            // posted, with a step that never ran
            |r| r.state = SagaState::Posted,
        ];
        for change in changed {
            let mut forged = forward.clone();
            change(&mut forged);
            assert!(!stored.accepts_progress(&forged), "{forged:?}");
        }
    }

    #[test]
    fn held_legs_are_every_leg_but_the_last() {
        let post = StepAction::Post { entries: vec![] };
        let claim = StepAction::ClaimReversal { of: Uuid::nil() };
        let mirror = StepAction::Mirror { of: Uuid::nil() };
        let plan = [post.clone(), post.clone(), post];
        assert_eq!((0..4).map(|i| holds_step(&plan, i)).collect::<Vec<_>>(), [true, true, false, false]);
        let reversal = [claim, mirror.clone(), mirror];
        assert_eq!((0..3).map(|i| holds_step(&reversal, i)).collect::<Vec<_>>(), [false, true, false]);
    }

    #[test]
    fn all_steps_posted_finishes_posted() {
        let now = Utc::now();
        let mut saga = record(3);
        for step in 0..3 {
            assert_eq!(saga.next_action(), Some(NextAction::Do(step)));
            saga.record_step(step, StepResult::Posted, now);
        }
        assert_eq!(saga.next_action(), Some(NextAction::FinishPosted));
        saga.finish(Value::Null, now);
        assert_eq!(saga.state, SagaState::Posted);
        assert_eq!(saga.next_action(), None);
    }

    #[test]
    fn a_refused_step_undoes_the_posted_ones_in_reverse_order() {
        let now = Utc::now();
        let mut saga = record(4);
        saga.record_step(0, StepResult::Posted, now);
        saga.record_step(1, StepResult::Posted, now);
        saga.record_step(2, StepResult::Refused { status: 422, body: Value::Null }, now);
        assert_eq!(saga.state, SagaState::Compensating);
        assert_eq!(saga.failure.as_ref().and_then(|f| f.step), Some(2));
        assert_eq!(saga.next_action(), Some(NextAction::Undo(1)));
        saga.record_undo(1, Some(Uuid::from_u128(9)), now);
        assert_eq!(saga.next_action(), Some(NextAction::Undo(0)));
        saga.record_undo(0, Some(Uuid::from_u128(10)), now);
        assert_eq!(saga.next_action(), Some(NextAction::FinishCompensated));
        saga.finish(Value::Null, now);
        assert_eq!(saga.state, SagaState::Compensated);
        assert_eq!(saga.steps[3].status, StepStatus::Pending, "never sent");
    }

    #[test]
    fn late_or_repeated_results_do_not_move_a_saga_backwards() {
        let now = Utc::now();
        let mut saga = record(2);
        saga.record_step(0, StepResult::Refused { status: 422, body: Value::Null }, now);
        let turned = saga.clone();
        saga.record_step(0, StepResult::Posted, now);
        saga.record_step(1, StepResult::Posted, now);
        assert_eq!(saga, turned);
        saga.finish(Value::Null, now);
        let done = saga.clone();
        assert!(!done.accepts_progress(&turned), "a terminal record is final");
        assert!(turned.accepts_progress(&done));
        assert!(!done.clone().accepts_progress(&record(2)));
        let mut regressed = turned.clone();
        regressed.state = SagaState::Running;
        assert!(!turned.accepts_progress(&regressed));
    }
}
