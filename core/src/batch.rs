//! Batch planning: the pure core of group commit.
//!
//! A shard writer collects commands into a batch, prefetches what they need into a
//! [`Snapshot`] (account states, idempotency records, external-reference claims, the
//! transactions to be reversed), and calls [`plan_batch`]. Commands are decided in
//! order, each against the state the earlier ones left, and a refused command never
//! affects its neighbours. The plan holds one [`Outcome`] per command and the [`Writes`]
//! that make the accepted ones durable; the shell writes them in one database
//! transaction and only then lets the new state replace its cache.

use crate::account::{AccountState, AccountStatus, EntryEffect, Unsettled};
use crate::command::{
    AbandonKeyCommand, BeginSagaCommand, ClaimKeyCommand, ClaimRefCommand, Command, CompleteKeyCommand, CompleteRefCommand,
    CreateAccountCommand, EntryCommand, ExternalRef, KeyCompletion, PostCommand, RefCompletion, ReverseCommand,
    SagaProgressCommand, SagaStepCommand, SetStatusCommand,
};
use crate::currency::Currency;
use crate::ids::IdSource;
use crate::money::Side;
use crate::outbox_form;
use crate::rejection::Rejection;
use crate::saga::{
    CLEARING_ACCOUNT_TYPE, LegEntry, SagaRecord, SagaState, StepAction, StepPhase, TX_TYPE_SAGA_COMPENSATION,
    clearing_account_code, clearing_account_id, clearing_entries,
};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

pub const TX_TYPE_REVERSAL: &str = "REVERSAL";

/// How long an idempotency key is remembered (PROTOCOL.md: at least 7 days).
pub const IDEMPOTENCY_KEY_RETENTION_DAYS: i64 = 8;

/// What a key already decided, or where it is being decided.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyOutcome {
    Posted {
        ledger_tx_id: Uuid,
    },
    Rejected {
        status: u16,
        body: Value,
    },
    /// Claimed on this (home) shard for a request that `target_shard` decides.
    Processing {
        target_shard: u16,
    },
    /// Released: the request that claimed it was refused without consuming the key.
    Retryable,
    /// Claimed on this (home) shard by the saga with this id, still running.
    SagaRunning {
        saga_id: Uuid,
    },
}

/// The stored status of an idempotency record (`ledger_idempotency.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Processing,
    Succeeded,
    FailedFinal,
    FailedRetryable,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Processing => "PROCESSING",
            KeyStatus::Succeeded => "SUCCEEDED",
            KeyStatus::FailedFinal => "FAILED_FINAL",
            KeyStatus::FailedRetryable => "FAILED_RETRYABLE",
        }
    }
}

/// An external reference claimed on its home shard by the request with `owner_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefClaim {
    pub owner_key: String,
    /// The transaction that holds the reference, once it posted.
    pub ledger_tx_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub outcome: KeyOutcome,
}

/// A posted transaction as a reversal needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginalTx {
    pub ledger_tx_id: Uuid,
    pub tenant_id: Uuid,
    pub tx_type: String,
    pub business_ref: Option<String>,
    pub entries: Vec<EntryCommand>,
    /// The `entry_seq` of each entry (1..=n, except in the legs of a saga).
    pub seqs: Vec<i32>,
    pub reversed_by: Option<Uuid>,
    /// A saga leg posted held whose hold is not settled yet (`ledger_saga_hold`).
    pub held: bool,
}

/// Everything a batch may read, prefetched by the shell. Absent means "does not exist".
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub accounts: HashMap<Uuid, AccountState>,
    pub keys: HashMap<(Uuid, String), KeyRecord>,
    /// References used by transactions posted on this shard.
    pub external_refs: HashMap<(Uuid, ExternalRef), Uuid>,
    /// References whose home is this shard, claimed for transactions posted elsewhere.
    pub ref_claims: HashMap<(Uuid, ExternalRef), RefClaim>,
    pub originals: HashMap<Uuid, OriginalTx>,
    /// Saga logs whose home is this shard.
    pub sagas: HashMap<Uuid, SagaRecord>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchInput {
    pub shard_id: u16,
    /// The posting time of every transaction in the batch; the shell keeps it
    /// non-decreasing per shard so that posting order and time order agree.
    pub now: DateTime<Utc>,
    pub next_commit_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedEntry {
    pub ledger_entry_id: Uuid,
    pub account_id: Uuid,
    pub side: Side,
    pub amount_minor: i64,
    pub currency: Currency,
    pub entry_seq: i32,
    pub balance_after_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedTx {
    pub ledger_tx_id: Uuid,
    pub posted_at: DateTime<Utc>,
    pub entries: Vec<PostedEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Posted(PostedTx),
    /// The key already posted this transaction: reply with it, marked replayed.
    Replay {
        ledger_tx_id: Uuid,
    },
    /// The key already got this business rejection: reply with it again.
    ReplayRejection {
        status: u16,
        body: Value,
    },
    Rejected(Rejection),
    /// The account exists now (created by this batch, or before with the same attributes).
    Account {
        account_id: Uuid,
    },
    /// The key is claimed for this request: go on to the target shard.
    KeyClaimed,
    /// The external reference is claimed for this request's key: go on.
    RefClaimed,
    /// Another request holds the external reference (posted, if the id is known).
    RefHeld {
        ledger_tx_id: Option<Uuid>,
    },
    /// A completion was recorded (or had been already); also a saga step that posts
    /// nothing (a reversal claim, an undo of a step that never posted).
    Completed,
    /// A saga was opened: its log as written, with its id.
    SagaBegun(Box<SagaRecord>),
    /// A saga was opened and its first step executed in the same batch: how it went.
    SagaBegunWithFirstStep(Box<SagaRecord>, Box<Outcome>),
    /// The key belongs to a saga that is still running.
    SagaInFlight {
        saga_id: Uuid,
    },
    /// A progress record was stored as given (at this time).
    SagaSaved {
        updated_at: DateTime<Utc>,
    },
    /// A progress record was ignored (it would move the saga back): the log as stored.
    Saga(Box<SagaRecord>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAccount {
    pub command: CreateAccountCommand,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub tenant_id: Uuid,
    pub account_id: Uuid,
    pub from: AccountStatus,
    pub to: AccountStatus,
    pub actor: String,
    pub reason_code: Option<String>,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TxRow {
    pub ledger_tx_id: Uuid,
    pub tenant_id: Uuid,
    pub commit_seq: i64,
    pub tx_type: String,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub external_ref: Option<ExternalRef>,
    pub business_ref: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub posted_at: DateTime<Utc>,
    pub actor: String,
    pub reason_code: Option<String>,
    pub metadata: Value,
    pub reverses_ledger_tx_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntryRow {
    pub ledger_entry_id: Uuid,
    pub ledger_tx_id: Uuid,
    pub tenant_id: Uuid,
    pub account_id: Uuid,
    pub side: Side,
    pub amount_minor: i64,
    pub currency: Currency,
    pub entry_seq: i32,
    pub balance_after_minor: i64,
    pub commit_seq: i64,
    pub effective_at: DateTime<Utc>,
    pub posted_at: DateTime<Utc>,
}

/// An idempotency record to insert, or to move on from PROCESSING / FAILED_RETRYABLE.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub status: KeyStatus,
    pub target_shard: Option<u16>,
    pub ledger_tx_id: Option<Uuid>,
    pub response_status: u16,
    pub response_body: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExternalRefRow {
    pub tenant_id: Uuid,
    pub external_ref: ExternalRef,
    pub ledger_tx_id: Uuid,
}

/// A claim of an external reference on its home shard: upserted, or deleted when released.
#[derive(Debug, Clone, PartialEq)]
pub struct RefClaimRow {
    pub tenant_id: Uuid,
    pub external_ref: ExternalRef,
    pub owner_key: String,
    /// The claiming request's fingerprint, written with a new claim.
    pub owner_fingerprint: Option<String>,
    pub ledger_tx_id: Option<Uuid>,
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReversalRow {
    pub tenant_id: Uuid,
    pub reversed_ledger_tx_id: Uuid,
    pub reversal_ledger_tx_id: Uuid,
}

/// A saga leg posted held on this shard (`ledger_saga_hold`).
#[derive(Debug, Clone, PartialEq)]
pub struct HoldRow {
    pub tenant_id: Uuid,
    pub saga_id: Uuid,
    pub step: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub aggregate_type: &'static str,
    pub aggregate_id: Uuid,
    pub event_type: &'static str,
    /// The event in its stored form: less what the columns above say ([`outbox_form`]).
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

impl OutboxRow {
    /// What the outbox row's columns say of the event (see [`crate::outbox_form`]).
    pub fn columns(&self) -> outbox_form::EventColumns<'_> {
        outbox_form::EventColumns {
            event_id: self.event_id,
            tenant_id: self.tenant_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    pub accounts: Vec<NewAccount>,
    pub status_changes: Vec<StatusChange>,
    pub transactions: Vec<TxRow>,
    pub entries: Vec<EntryRow>,
    /// At most one row per key: a later decision in the batch replaces an earlier one.
    pub keys: Vec<KeyRow>,
    pub external_refs: Vec<ExternalRefRow>,
    /// At most one row per reference, like `keys`.
    pub ref_claims: Vec<RefClaimRow>,
    pub reversals: Vec<ReversalRow>,
    /// Saga logs to insert or update, at most one row per saga.
    pub sagas: Vec<SagaRecord>,
    /// Saga legs posted held in this batch.
    pub holds_opened: Vec<HoldRow>,
    /// Saga legs (by saga id) whose hold settled in this batch: released or compensated.
    pub holds_settled: Vec<Uuid>,
    /// Accounts whose balance or status changed; their final state is in the snapshot.
    pub touched_accounts: BTreeSet<Uuid>,
    pub outbox: Vec<OutboxRow>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.status_changes.is_empty()
            && self.transactions.is_empty()
            && self.keys.is_empty()
            && self.ref_claims.is_empty()
            && self.sagas.is_empty()
            && self.holds_opened.is_empty()
            && self.holds_settled.is_empty()
            && self.touched_accounts.is_empty()
    }
}

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

/// Whether a refusal with this status and body is remembered under its key (PROTOCOL.md:
/// 409 and 422, except the refusals that concern the key itself).
pub fn rejection_is_stored(status: u16, body: &Value) -> bool {
    let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or_default();
    matches!(status, 409 | 422) && !matches!(code, "IDEMPOTENCY_CONFLICT" | "IN_PROGRESS")
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

    fn create_account(&mut self, command: &CreateAccountCommand) -> Outcome {
        if let Some(existing) = self.snapshot.accounts.get(&command.account_id) {
            debug_assert_eq!(existing.tenant_id, command.tenant_id, "derived ids embed the tenant");
            return if existing.attributes_digest == command.attributes_digest() {
                Outcome::Account { account_id: command.account_id }
            } else {
                Outcome::Rejected(Rejection::AccountExists { account_id: command.account_id })
            };
        }
        let state = AccountState {
            account_id: command.account_id,
            tenant_id: command.tenant_id,
            account_type: command.account_type,
            currency: command.currency,
            status: AccountStatus::Active,
            allow_negative: command.allow_negative,
            balance_minor: 0,
            debits_minor: 0,
            credits_minor: 0,
            unsettled_debits_minor: 0,
            unsettled_credits_minor: 0,
            version: 0,
            last_entry_id: None,
            attributes_digest: command.attributes_digest(),
        };
        self.snapshot.accounts.insert(command.account_id, state);
        self.writes.accounts.push(NewAccount { command: command.clone(), created_at: self.now() });
        let payload = json!({
            "code": command.code,
            "type": command.account_type,
            "currency": command.currency,
            "allow_negative": command.allow_negative,
            "created_at": self.now(),
        });
        self.event(command.tenant_id, "account", command.account_id, "account.created", payload);
        Outcome::Account { account_id: command.account_id }
    }

    fn set_status(&mut self, command: &SetStatusCommand) -> Outcome {
        let Some(account) = self.tenant_account(command.tenant_id, command.account_id) else {
            return Outcome::Rejected(Rejection::AccountNotFound { account_id: Some(command.account_id) });
        };
        let from = account.status;
        if from == command.status {
            return Outcome::Account { account_id: command.account_id };
        }
        if from == AccountStatus::Closed {
            return Outcome::Rejected(Rejection::AccountClosed { account_id: command.account_id });
        }
        if self.is_clearing(account) {
            return Outcome::Rejected(Rejection::clearing_account(command.account_id));
        }
        if command.status == AccountStatus::Closed && account.balance_minor != 0 {
            return Outcome::Rejected(Rejection::AccountBalanceNonzero {
                account_id: command.account_id,
                balance_minor: account.balance_minor,
            });
        }
        if command.status == AccountStatus::Closed && account.is_settling() {
            return Outcome::Rejected(Rejection::AccountSettling { account_id: command.account_id });
        }
        let now = self.now();
        self.snapshot.accounts.get_mut(&command.account_id).expect("checked above").status = command.status;
        self.writes.touched_accounts.insert(command.account_id);
        self.writes.status_changes.push(StatusChange {
            tenant_id: command.tenant_id,
            account_id: command.account_id,
            from,
            to: command.status,
            actor: command.actor.clone(),
            reason_code: command.reason_code.clone(),
            changed_at: now,
        });
        let payload = json!({
            "from": from,
            "to": command.status,
            "actor": command.actor,
            "reason_code": command.reason_code,
            "changed_at": now,
        });
        self.event(command.tenant_id, "account", command.account_id, "account.status_changed", payload);
        Outcome::Account { account_id: command.account_id }
    }

    /// The answer of an already used key, if any: a replay or a conflict. A key claimed
    /// for this very request, or released, lets the request go on.
    fn check_key(&self, tenant_id: Uuid, key: &str, fingerprint: &str) -> Option<Outcome> {
        let record = self.snapshot.keys.get(&(tenant_id, key.to_owned()))?;
        let same = record.fingerprint == fingerprint;
        match &record.outcome {
            KeyOutcome::Retryable => None,
            _ if !same => Some(Outcome::Rejected(Rejection::IdempotencyConflict)),
            KeyOutcome::SagaRunning { saga_id } => Some(Outcome::SagaInFlight { saga_id: *saga_id }),
            KeyOutcome::Processing { .. } => None,
            KeyOutcome::Posted { ledger_tx_id } => Some(Outcome::Replay { ledger_tx_id: *ledger_tx_id }),
            KeyOutcome::Rejected { status, body } => Some(Outcome::ReplayRejection { status: *status, body: body.clone() }),
        }
    }

    fn record_key(&mut self, tenant_id: Uuid, key: &str, fingerprint: &str, outcome: KeyOutcome) {
        let (status, target_shard, ledger_tx_id, response_status, response_body) = match &outcome {
            KeyOutcome::Posted { ledger_tx_id } => (KeyStatus::Succeeded, None, Some(*ledger_tx_id), 200, None),
            KeyOutcome::Rejected { status, body } => (KeyStatus::FailedFinal, None, None, *status, Some(body.clone())),
            KeyOutcome::Processing { target_shard } => (KeyStatus::Processing, Some(*target_shard), None, 0, None),
            KeyOutcome::Retryable => (KeyStatus::FailedRetryable, None, None, 0, None),
            KeyOutcome::SagaRunning { saga_id } => (KeyStatus::Processing, None, Some(*saga_id), 0, None),
        };
        self.writes.keys.push(KeyRow {
            tenant_id,
            idempotency_key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            status,
            target_shard,
            ledger_tx_id,
            response_status,
            response_body,
            created_at: self.now(),
            expires_at: self.now() + Duration::days(IDEMPOTENCY_KEY_RETENTION_DAYS),
        });
        self.snapshot.keys.insert((tenant_id, key.to_owned()), KeyRecord { fingerprint: fingerprint.to_owned(), outcome });
    }

    fn claim_key(&mut self, command: &ClaimKeyCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        let already = self.snapshot.keys.get(&(tenant_id, key.clone()));
        if !matches!(already, Some(KeyRecord { outcome: KeyOutcome::Processing { .. }, .. })) {
            self.record_key(tenant_id, key, fingerprint, KeyOutcome::Processing { target_shard: command.target_shard });
        }
        Outcome::KeyClaimed
    }

    fn complete_key(&mut self, command: &CompleteKeyCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        let claimed = matches!(
            self.snapshot.keys.get(&(tenant_id, key.clone())),
            Some(KeyRecord { outcome: KeyOutcome::Processing { .. }, fingerprint: f }) if f == fingerprint
        );
        // Completions are idempotent and may arrive late or twice: only a claim for this
        // very request moves on, and only once.
        if claimed {
            let outcome = match &command.completion {
                KeyCompletion::Posted { ledger_tx_id } => KeyOutcome::Posted { ledger_tx_id: *ledger_tx_id },
                KeyCompletion::Rejected { status, body } => KeyOutcome::Rejected { status: *status, body: body.clone() },
                KeyCompletion::Released => KeyOutcome::Retryable,
            };
            self.record_key(tenant_id, key, fingerprint, outcome);
        }
        Outcome::Completed
    }

    /// Who holds an external reference on this shard, if anyone but `key`.
    fn ref_holder(&self, tenant_id: Uuid, external_ref: &ExternalRef, key: &str) -> Option<Option<Uuid>> {
        let id = (tenant_id, external_ref.clone());
        if let Some(tx) = self.snapshot.external_refs.get(&id) {
            return Some(Some(*tx));
        }
        match self.snapshot.ref_claims.get(&id) {
            Some(claim) if claim.owner_key != key => Some(claim.ledger_tx_id),
            _ => None,
        }
    }

    fn claim_ref(&mut self, command: &ClaimRefCommand) -> Outcome {
        let (tenant_id, external_ref, key) = (command.tenant_id, &command.external_ref, &command.idempotency_key);
        if let Some(holder) = self.ref_holder(tenant_id, external_ref, key) {
            return Outcome::RefHeld { ledger_tx_id: holder };
        }
        let id = (tenant_id, external_ref.clone());
        if !self.snapshot.ref_claims.contains_key(&id) {
            let claim = RefClaim { owner_key: key.clone(), ledger_tx_id: None };
            self.write_ref_claim(tenant_id, external_ref, &claim, false);
            self.writes.ref_claims.last_mut().expect("just written").owner_fingerprint = Some(command.fingerprint.clone());
            self.snapshot.ref_claims.insert(id, claim);
        }
        Outcome::RefClaimed
    }

    fn complete_ref(&mut self, command: &CompleteRefCommand) -> Outcome {
        let id = (command.tenant_id, command.external_ref.clone());
        let Some(claim) = self.snapshot.ref_claims.get(&id).cloned() else { return Outcome::Completed };
        if claim.owner_key != command.idempotency_key || claim.ledger_tx_id.is_some() {
            return Outcome::Completed;
        }
        match command.completion {
            RefCompletion::Bound { ledger_tx_id } => {
                let bound = RefClaim { ledger_tx_id: Some(ledger_tx_id), ..claim };
                self.write_ref_claim(command.tenant_id, &command.external_ref, &bound, false);
                self.snapshot.ref_claims.insert(id, bound);
            }
            RefCompletion::Released => {
                self.write_ref_claim(command.tenant_id, &command.external_ref, &claim, true);
                self.snapshot.ref_claims.remove(&id);
            }
        }
        Outcome::Completed
    }

    fn write_ref_claim(&mut self, tenant_id: Uuid, external_ref: &ExternalRef, claim: &RefClaim, released: bool) {
        self.writes.ref_claims.push(RefClaimRow {
            tenant_id,
            external_ref: external_ref.clone(),
            owner_key: claim.owner_key.clone(),
            owner_fingerprint: None,
            ledger_tx_id: claim.ledger_tx_id,
            released,
        });
    }

    /// The outcome of an abandoned request's key on the shard that decides it; a key not
    /// decided here is refused for good, so that a late copy of the request cannot post.
    fn abandon_key(&mut self, command: &AbandonKeyCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        match self.snapshot.keys.get(&(tenant_id, key.clone())).map(|r| &r.outcome) {
            Some(KeyOutcome::Posted { ledger_tx_id }) => Outcome::Replay { ledger_tx_id: *ledger_tx_id },
            Some(KeyOutcome::Rejected { status, body }) => Outcome::ReplayRejection { status: *status, body: body.clone() },
            // claimed here for a request decided elsewhere, or held by a running saga: not
            // this shard's to settle
            Some(KeyOutcome::Processing { .. } | KeyOutcome::SagaRunning { .. }) => Outcome::Rejected(Rejection::InProgress),
            None | Some(KeyOutcome::Retryable) => self.refuse(tenant_id, key, fingerprint, Rejection::RequestAbandoned),
        }
    }

    /// Refuses a keyed command, remembering the refusal under the key when the protocol
    /// says it is replayed.
    fn refuse(&mut self, tenant_id: Uuid, key: &str, fingerprint: &str, rejection: Rejection) -> Outcome {
        if rejection.is_stored_under_key() {
            let outcome = KeyOutcome::Rejected { status: rejection.status(), body: rejection.to_body() };
            self.record_key(tenant_id, key, fingerprint, outcome);
        }
        Outcome::Rejected(rejection)
    }

    /// Whether `account` is one of this shard's clearing accounts: the ledger's own, which
    /// no client may post to or change.
    fn is_clearing(&self, account: &AccountState) -> bool {
        account.allow_negative
            && account.account_id == clearing_account_id(account.tenant_id, self.input.shard_id, account.currency)
    }

    /// Checks status, funds and totals of every entry; the effects if all pass.
    fn effects(
        &self,
        tenant_id: Uuid,
        entries: &[EntryCommand],
        frozen_blocks: bool,
        unsettled: Unsettled,
    ) -> Result<Vec<EntryEffect>, Rejection> {
        let mut effects = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let account = self
                .tenant_account(tenant_id, entry.account_id)
                .ok_or(Rejection::AccountNotFound { account_id: Some(entry.account_id) })?;
            if account.status == AccountStatus::Closed {
                return Err(Rejection::AccountClosed { account_id: entry.account_id });
            }
            if frozen_blocks && account.status == AccountStatus::Frozen && account.is_outgoing(entry.side) {
                return Err(Rejection::AccountFrozen { account_id: entry.account_id });
            }
            let effect = account.effect_of(entry.side, entry.amount_minor, unsettled).ok_or_else(|| {
                Rejection::invalid(format!("entries[{index}].amount_minor"), "the account's totals would pass 2^63-1")
            })?;
            if !account.funds_allow(&effect) {
                return Err(Rejection::InsufficientFunds {
                    account_id: entry.account_id,
                    balance_minor: account.balance_minor,
                    held_minor: account.held_minor(),
                    required_minor: entry.amount_minor,
                });
            }
            effects.push(effect);
        }
        Ok(effects)
    }

    fn post(&mut self, command: &PostCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        for entry in &command.entries {
            let Some(account) = self.tenant_account(tenant_id, entry.account_id) else {
                return Outcome::Rejected(Rejection::AccountNotFound { account_id: Some(entry.account_id) });
            };
            if account.currency != entry.currency {
                return Outcome::Rejected(Rejection::CurrencyMismatch {
                    account_id: entry.account_id,
                    account_currency: account.currency.to_string(),
                    entry_currency: entry.currency.to_string(),
                });
            }
            if self.is_clearing(account) {
                return Outcome::Rejected(Rejection::clearing_account(entry.account_id));
            }
        }
        if let Some(holder) = command.external_ref_held_by {
            return self.refuse(tenant_id, key, fingerprint, Rejection::DuplicateExternalRef { ledger_tx_id: holder });
        }
        if let Some(external_ref) = &command.external_ref {
            match self.ref_holder(tenant_id, external_ref, key) {
                Some(Some(holder)) => {
                    return self.refuse(tenant_id, key, fingerprint, Rejection::DuplicateExternalRef { ledger_tx_id: holder });
                }
                // another request is posting with this reference right now
                Some(None) => return Outcome::Rejected(Rejection::InProgress),
                None => {}
            }
        }
        let effects = match self.effects(tenant_id, &command.entries, true, Unsettled::Unchanged) {
            Ok(effects) => effects,
            Err(rejection) => return self.refuse(tenant_id, key, fingerprint, rejection),
        };
        self.accept(Accepted {
            tenant_id,
            idempotency_key: key,
            fingerprint,
            tx_type: &command.tx_type,
            entries: &command.entries,
            entry_seqs: &[],
            ledger_tx_id: None,
            effects,
            external_ref: command.external_ref.as_ref(),
            business_ref: command.business_ref.as_ref(),
            occurred_at: command.occurred_at,
            actor: &command.actor,
            reason_code: command.reason_code.as_ref(),
            metadata: command.metadata.clone(),
            reverses_ledger_tx_id: None,
            held_step: None,
        })
    }

    fn reverse(&mut self, command: &ReverseCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        let Some(original) = self.snapshot.originals.get(&command.ledger_tx_id).filter(|o| o.tenant_id == tenant_id) else {
            return Outcome::Rejected(Rejection::TransactionNotFound);
        };
        if original.tx_type == TX_TYPE_REVERSAL {
            return Outcome::Rejected(Rejection::invalid(
                "ledger_tx_id",
                "a reversal cannot itself be reversed; post a new transaction to correct it",
            ));
        }
        if let Some(reversal_tx_id) = original.reversed_by {
            return self.refuse(tenant_id, key, fingerprint, Rejection::AlreadyReversed { reversal_tx_id });
        }
        let mirrored: Vec<EntryCommand> =
            original.entries.iter().map(|e| EntryCommand { side: e.side.opposite(), ..e.clone() }).collect();
        let business_ref = original.business_ref.clone();
        let seqs = original.seqs.clone();
        let effects = match self.effects(tenant_id, &mirrored, false, Unsettled::Unchanged) {
            Ok(effects) => effects,
            Err(rejection) => return self.refuse(tenant_id, key, fingerprint, rejection),
        };
        let outcome = self.accept(Accepted {
            tenant_id,
            idempotency_key: key,
            fingerprint,
            tx_type: TX_TYPE_REVERSAL,
            entries: &mirrored,
            entry_seqs: &seqs,
            ledger_tx_id: None,
            effects,
            external_ref: None,
            business_ref: business_ref.as_ref(),
            occurred_at: None,
            actor: &command.actor,
            reason_code: Some(&command.reason_code),
            metadata: json!({}),
            reverses_ledger_tx_id: Some(command.ledger_tx_id),
            held_step: None,
        });
        if let Outcome::Posted(posted) = &outcome {
            self.snapshot.originals.get_mut(&command.ledger_tx_id).expect("looked up above").reversed_by =
                Some(posted.ledger_tx_id);
            self.writes.reversals.push(ReversalRow {
                tenant_id,
                reversed_ledger_tx_id: command.ledger_tx_id,
                reversal_ledger_tx_id: posted.ledger_tx_id,
            });
        }
        outcome
    }

    // ---- sagas -------------------------------------------------------------------

    /// Opens a saga: the key is claimed for it and its log written, in this batch.
    fn begin_saga(&mut self, command: &BeginSagaCommand) -> Outcome {
        let draft = &command.record;
        let (tenant_id, key, fingerprint) = (draft.tenant_id, &draft.idempotency_key, &draft.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        if let Some(KeyRecord { outcome: KeyOutcome::Processing { .. }, .. }) = self.snapshot.keys.get(&(tenant_id, key.clone()))
        {
            // claimed for a single-shard request with this very body: cannot be a saga too
            return Outcome::Rejected(Rejection::InProgress);
        }
        let now = self.now();
        let saga_id = self.ids.saga_id(now, self.input.shard_id);
        let fresh =
            SagaRecord::draft(tenant_id, key, fingerprint, draft.kind.clone(), draft.header.clone(), draft.steps.clone(), now);
        let record = SagaRecord { saga_id, ..fresh };
        self.record_key(tenant_id, key, fingerprint, KeyOutcome::SagaRunning { saga_id });
        self.snapshot.sagas.insert(saga_id, record.clone());
        self.writes.sagas.push(record.clone());
        if command.runs_first_step_on(self.input.shard_id) {
            let first = self.saga_step(&command.first_step(saga_id));
            return Outcome::SagaBegunWithFirstStep(Box::new(record), Box::new(first));
        }
        Outcome::SagaBegun(Box::new(record))
    }

    /// Stores a coordinator's progress if it moves the saga forward; a terminal saga also
    /// completes its key: a posted saga replays, a refusal is stored or frees the key as
    /// the same refusal of a single-shard request would.
    fn saga_progress(&mut self, command: &SagaProgressCommand) -> Outcome {
        let newer = &command.record;
        let Some(stored) = self.snapshot.sagas.get(&newer.saga_id).filter(|s| s.tenant_id == newer.tenant_id) else {
            return Outcome::Rejected(Rejection::TransactionNotFound);
        };
        if !stored.accepts_progress(newer) {
            return Outcome::Saga(Box::new(stored.clone()));
        }
        let record = SagaRecord { reversed_by: stored.reversed_by, updated_at: self.now(), ..newer.clone() };
        if let Some(release) = command.home_release()
            && let refused @ Outcome::Rejected(_) = self.release_step(&release)
        {
            return refused;
        }
        let (tenant_id, key, fingerprint) = (record.tenant_id, record.idempotency_key.clone(), record.fingerprint.clone());
        let owns_key = matches!(
            self.snapshot.keys.get(&(tenant_id, key.clone())),
            Some(KeyRecord { outcome: KeyOutcome::SagaRunning { saga_id }, fingerprint: f })
                if *saga_id == record.saga_id && *f == fingerprint
        );
        if owns_key && record.state.is_terminal() {
            let outcome = match (&record.state, &record.failure, &record.reply) {
                (SagaState::Posted, _, _) => KeyOutcome::Posted { ledger_tx_id: record.saga_id },
                (_, Some(failure), Some(reply)) if rejection_is_stored(failure.status, reply) => {
                    KeyOutcome::Rejected { status: failure.status, body: reply.clone() }
                }
                _ => KeyOutcome::Retryable,
            };
            self.record_key(tenant_id, &key, &fingerprint, outcome);
        }
        let updated_at = record.updated_at;
        self.snapshot.sagas.insert(record.saga_id, record.clone());
        self.writes.sagas.push(record);
        Outcome::SagaSaved { updated_at }
    }

    fn saga_step(&mut self, command: &SagaStepCommand) -> Outcome {
        const FINGERPRINT: &str = "saga-step";
        match command.phase {
            StepPhase::Forward => {}
            StepPhase::Undo => return self.undo_step(command, FINGERPRINT),
            StepPhase::Release => return self.release_step(command),
        }
        let tenant_id = command.tenant_id;
        let key = command.forward_key();
        if let Some(answer) = self.step_answered(command, &key) {
            return answer;
        }
        let (unsettled, held_step) =
            if command.hold { (Unsettled::Opens, Some(command.step)) } else { (Unsettled::Unchanged, None) };
        // Every refusal of a step is stored under its key, whatever its status: a step
        // re-sent by a resuming coordinator must get the same answer, or a saga that
        // turned back could see a leg post after all.
        let refused = |planner: &mut Self, rejection: Rejection| {
            let outcome = KeyOutcome::Rejected { status: rejection.status(), body: rejection.to_body() };
            planner.record_key(tenant_id, &key, FINGERPRINT, outcome);
            Outcome::Rejected(rejection)
        };
        match &command.action {
            StepAction::Post { entries } => {
                let mut leg: Vec<LegEntry> = entries.clone();
                for e in entries {
                    let Some(account) = self.tenant_account(tenant_id, e.entry.account_id) else {
                        return refused(self, Rejection::AccountNotFound { account_id: Some(e.entry.account_id) });
                    };
                    if account.currency != e.entry.currency {
                        let mismatch = Rejection::CurrencyMismatch {
                            account_id: e.entry.account_id,
                            account_currency: account.currency.to_string(),
                            entry_currency: e.entry.currency.to_string(),
                        };
                        return refused(self, mismatch);
                    }
                    if self.is_clearing(account) {
                        return refused(self, Rejection::clearing_account(e.entry.account_id));
                    }
                }
                let client_entries: Vec<EntryCommand> = entries.iter().map(|e| e.entry.clone()).collect();
                let mut effects = match self.effects(tenant_id, &client_entries, true, unsettled) {
                    Ok(effects) => effects,
                    Err(rejection) => return refused(self, rejection),
                };
                let clearing = clearing_entries(tenant_id, self.input.shard_id, entries, command.header.entry_count);
                let whole_leg: Vec<EntryCommand> =
                    client_entries.iter().chain(clearing.iter().map(|e| &e.entry)).cloned().collect();
                if let Err(rejection) = crate::validate::balanced(&whole_leg) {
                    return refused(self, rejection);
                }
                // only a leg that posts creates its clearing account
                for c in &clearing {
                    self.ensure_clearing_account(tenant_id, c.entry.currency);
                }
                let clearing_commands: Vec<EntryCommand> = clearing.iter().map(|e| e.entry.clone()).collect();
                match self.effects(tenant_id, &clearing_commands, true, unsettled) {
                    Ok(more) => effects.extend(more),
                    // a clearing account's totals would pass 2^63-1: refuse, like any account
                    Err(rejection) => return refused(self, rejection),
                }
                leg.extend(clearing);
                let (seqs, entries): (Vec<i32>, Vec<EntryCommand>) = leg.into_iter().map(|e| (e.seq, e.entry)).unzip();
                let header = &command.header;
                self.accept(Accepted {
                    tenant_id,
                    idempotency_key: &key,
                    fingerprint: FINGERPRINT,
                    tx_type: &header.tx_type,
                    entries: &entries,
                    entry_seqs: &seqs,
                    ledger_tx_id: Some(command.saga_id),
                    effects,
                    external_ref: None,
                    business_ref: header.business_ref.as_ref(),
                    occurred_at: header.occurred_at,
                    actor: &header.actor,
                    reason_code: header.reason_code.as_ref(),
                    metadata: header.metadata.clone(),
                    reverses_ledger_tx_id: None,
                    held_step,
                })
            }
            StepAction::Mirror { of } => {
                let Some(original) = self.snapshot.originals.get(of).filter(|o| o.tenant_id == tenant_id).cloned() else {
                    return refused(self, Rejection::TransactionNotFound);
                };
                let mirrored: Vec<EntryCommand> =
                    original.entries.iter().map(|e| EntryCommand { side: e.side.opposite(), ..e.clone() }).collect();
                let effects = match self.effects(tenant_id, &mirrored, false, unsettled) {
                    Ok(effects) => effects,
                    Err(rejection) => return refused(self, rejection),
                };
                let header = &command.header;
                self.accept(Accepted {
                    tenant_id,
                    idempotency_key: &key,
                    fingerprint: FINGERPRINT,
                    tx_type: TX_TYPE_REVERSAL,
                    entries: &mirrored,
                    entry_seqs: &original.seqs,
                    ledger_tx_id: Some(command.saga_id),
                    effects,
                    external_ref: None,
                    business_ref: original.business_ref.as_ref(),
                    occurred_at: None,
                    actor: &header.actor,
                    reason_code: header.reason_code.as_ref(),
                    metadata: json!({}),
                    reverses_ledger_tx_id: Some(*of),
                    held_step,
                })
            }
            StepAction::ClaimReversal { of } => {
                let Some(original) = self.snapshot.sagas.get(of).filter(|s| s.tenant_id == tenant_id) else {
                    return refused(self, Rejection::TransactionNotFound);
                };
                if original.state != SagaState::Posted {
                    return refused(self, Rejection::TransactionNotFound);
                }
                match original.reversed_by {
                    Some(other) if other != command.saga_id => {
                        return refused(self, Rejection::AlreadyReversed { reversal_tx_id: other });
                    }
                    _ => {}
                }
                let claimed = SagaRecord { reversed_by: Some(command.saga_id), updated_at: self.now(), ..original.clone() };
                self.snapshot.sagas.insert(*of, claimed.clone());
                self.writes.sagas.push(claimed);
                self.record_key(tenant_id, &key, FINGERPRINT, KeyOutcome::Posted { ledger_tx_id: *of });
                Outcome::Completed
            }
        }
    }

    /// A step or undo that was executed (or refused) before answers as it did then.
    fn step_answered(&self, command: &SagaStepCommand, key: &str) -> Option<Outcome> {
        match self.snapshot.keys.get(&(command.tenant_id, key.to_owned())).map(|r| &r.outcome) {
            Some(KeyOutcome::Posted { .. }) if matches!(command.action, StepAction::ClaimReversal { .. }) => {
                Some(Outcome::Completed)
            }
            Some(KeyOutcome::Posted { ledger_tx_id }) => Some(Outcome::Replay { ledger_tx_id: *ledger_tx_id }),
            Some(KeyOutcome::Rejected { status, body }) => Some(Outcome::ReplayRejection { status: *status, body: body.clone() }),
            _ => None,
        }
    }

    /// Undoes a step. If the step never executed here, it is marked refused first, so that
    /// a late copy of it can never execute after the saga turned back.
    fn undo_step(&mut self, command: &SagaStepCommand, fingerprint: &str) -> Outcome {
        let tenant_id = command.tenant_id;
        let key = crate::saga::undo_key(command.saga_id, command.step);
        if let Some(answer) = self.step_answered(command, &key) {
            return answer;
        }
        let forward_key = crate::saga::step_key(command.saga_id, command.step);
        match self.snapshot.keys.get(&(tenant_id, forward_key.clone())).map(|r| r.outcome.clone()) {
            Some(KeyOutcome::Posted { .. }) => {}
            Some(KeyOutcome::Rejected { .. }) => return Outcome::Completed,
            _ => {
                // internal only: a coordinator sees it, never a client
                let body = json!({"error": {"code": "SAGA_ABORTED", "message": "the saga turned back before this step ran",
                                            "details": {"saga_id": command.saga_id}}});
                let outcome = KeyOutcome::Rejected { status: 409, body };
                self.record_key(tenant_id, &forward_key, fingerprint, outcome);
                return Outcome::Completed;
            }
        }
        match &command.action {
            StepAction::ClaimReversal { of } => {
                if let Some(original) = self.snapshot.sagas.get(of).cloned()
                    && original.reversed_by == Some(command.saga_id)
                {
                    let released = SagaRecord { reversed_by: None, updated_at: self.now(), ..original };
                    self.snapshot.sagas.insert(*of, released.clone());
                    self.writes.sagas.push(released);
                }
                self.record_key(tenant_id, &key, fingerprint, KeyOutcome::Posted { ledger_tx_id: *of });
                Outcome::Completed
            }
            StepAction::Post { .. } | StepAction::Mirror { .. } => {
                let Some(leg) = self.snapshot.originals.get(&command.saga_id).filter(|o| o.tenant_id == tenant_id).cloned()
                else {
                    return Outcome::Rejected(Rejection::TransactionNotFound);
                };
                let mirrored: Vec<EntryCommand> =
                    leg.entries.iter().map(|e| EntryCommand { side: e.side.opposite(), ..e.clone() }).collect();
                // A held leg's compensation cannot be refused: what the leg brought in was
                // never spendable and its accounts could not be closed. An unheld leg (a
                // last leg is never undone; older logs) obeys the ordinary rules: a refusal
                // is not stored, the coordinator retries until it posts, and it never
                // drives a non-negative account below zero.
                let unsettled = if leg.held { Unsettled::Settles } else { Unsettled::Unchanged };
                let effects = match self.effects(tenant_id, &mirrored, false, unsettled) {
                    Ok(effects) => effects,
                    Err(rejection) => return Outcome::Rejected(rejection),
                };
                if leg.held {
                    self.settle_hold(command.saga_id);
                }
                self.accept(Accepted {
                    tenant_id,
                    idempotency_key: &key,
                    fingerprint,
                    tx_type: TX_TYPE_SAGA_COMPENSATION,
                    entries: &mirrored,
                    entry_seqs: &leg.seqs,
                    ledger_tx_id: None,
                    effects,
                    external_ref: None,
                    business_ref: leg.business_ref.as_ref(),
                    occurred_at: None,
                    actor: &command.header.actor,
                    reason_code: Some(&"SAGA_COMPENSATION".to_owned()),
                    metadata: json!({"saga_id": command.saga_id, "step": command.step}),
                    reverses_ledger_tx_id: Some(command.saga_id),
                    held_step: None,
                })
            }
        }
    }

    /// Settles a held leg of a saga that posted: its amounts stop being unsettled. Done
    /// once; a leg that is not held (settled before, or compensated) has nothing to do.
    fn release_step(&mut self, command: &SagaStepCommand) -> Outcome {
        let tenant_id = command.tenant_id;
        if !matches!(
            self.snapshot.keys.get(&(tenant_id, command.forward_key())).map(|r| &r.outcome),
            Some(KeyOutcome::Posted { .. })
        ) {
            return Outcome::Rejected(Rejection::invalid("step", "only a posted saga leg can be released"));
        }
        let Some(leg) = self.snapshot.originals.get(&command.saga_id).filter(|o| o.tenant_id == tenant_id).cloned() else {
            return Outcome::Completed;
        };
        if !leg.held {
            return Outcome::Completed;
        }
        let mut released = Vec::with_capacity(leg.entries.len());
        for entry in &leg.entries {
            let mut account = self.snapshot.accounts.get(&entry.account_id).expect("the leg's accounts are prefetched").clone();
            if account.release(entry.side, entry.amount_minor).is_none() {
                // the projection disagrees with the hold rows: refuse rather than guess
                return Outcome::Rejected(Rejection::invalid("step", "the leg's amounts are not unsettled on its accounts"));
            }
            released.push(account);
        }
        for account in released {
            self.writes.touched_accounts.insert(account.account_id);
            self.snapshot.accounts.insert(account.account_id, account);
        }
        self.settle_hold(command.saga_id);
        Outcome::Completed
    }

    fn settle_hold(&mut self, saga_id: Uuid) {
        if let Some(leg) = self.snapshot.originals.get_mut(&saga_id) {
            leg.held = false;
        }
        self.writes.holds_settled.push(saga_id);
    }

    /// Creates this shard's clearing account for the tenant and currency if it is new.
    fn ensure_clearing_account(&mut self, tenant_id: Uuid, currency: Currency) {
        let account_id = crate::saga::clearing_account_id(tenant_id, self.input.shard_id, currency);
        if self.snapshot.accounts.contains_key(&account_id) {
            return;
        }
        let command = CreateAccountCommand {
            tenant_id,
            account_id,
            code: clearing_account_code(self.input.shard_id, currency),
            account_type: CLEARING_ACCOUNT_TYPE,
            currency,
            allow_negative: true,
            metadata: json!({"system": "clearing"}),
        };
        self.create_account(&command);
    }

    fn accept(&mut self, tx: Accepted<'_>) -> Outcome {
        // whatever path led here, nothing that does not balance is written
        if let Err(rejection) = crate::validate::balanced(tx.entries) {
            return Outcome::Rejected(rejection);
        }
        let now = self.now();
        let ledger_tx_id = tx.ledger_tx_id.unwrap_or_else(|| self.ids.ledger_id(now, self.input.shard_id));
        let commit_seq = self.next_commit_seq;
        self.next_commit_seq += 1;
        let occurred_at = tx.occurred_at.unwrap_or(now);
        let mut posted_entries = Vec::with_capacity(tx.entries.len());
        for (index, (entry, effect)) in tx.entries.iter().zip(&tx.effects).enumerate() {
            let ledger_entry_id = self.ids.ledger_id(now, self.input.shard_id);
            let entry_seq = tx.entry_seqs.get(index).copied().unwrap_or(index as i32 + 1);
            self.snapshot.accounts.get_mut(&entry.account_id).expect("checked by effects").apply(*effect, ledger_entry_id);
            self.writes.touched_accounts.insert(entry.account_id);
            self.writes.entries.push(EntryRow {
                ledger_entry_id,
                ledger_tx_id,
                tenant_id: tx.tenant_id,
                account_id: entry.account_id,
                side: entry.side,
                amount_minor: entry.amount_minor,
                currency: entry.currency,
                entry_seq,
                balance_after_minor: effect.balance_after_minor,
                commit_seq,
                effective_at: occurred_at,
                posted_at: now,
            });
            posted_entries.push(PostedEntry {
                ledger_entry_id,
                account_id: entry.account_id,
                side: entry.side,
                amount_minor: entry.amount_minor,
                currency: entry.currency,
                entry_seq,
                balance_after_minor: effect.balance_after_minor,
            });
        }
        self.writes.transactions.push(TxRow {
            ledger_tx_id,
            tenant_id: tx.tenant_id,
            commit_seq,
            tx_type: tx.tx_type.to_owned(),
            idempotency_key: tx.idempotency_key.to_owned(),
            fingerprint: tx.fingerprint.to_owned(),
            external_ref: tx.external_ref.cloned(),
            business_ref: tx.business_ref.cloned(),
            occurred_at,
            posted_at: now,
            actor: tx.actor.to_owned(),
            reason_code: tx.reason_code.cloned(),
            metadata: tx.metadata,
            reverses_ledger_tx_id: tx.reverses_ledger_tx_id,
        });
        self.record_key(tx.tenant_id, tx.idempotency_key, tx.fingerprint, KeyOutcome::Posted { ledger_tx_id });
        if let Some(external_ref) = tx.external_ref {
            self.writes.external_refs.push(ExternalRefRow {
                tenant_id: tx.tenant_id,
                external_ref: external_ref.clone(),
                ledger_tx_id,
            });
            self.snapshot.external_refs.insert((tx.tenant_id, external_ref.clone()), ledger_tx_id);
        }
        self.snapshot.originals.insert(
            ledger_tx_id,
            OriginalTx {
                ledger_tx_id,
                tenant_id: tx.tenant_id,
                tx_type: tx.tx_type.to_owned(),
                business_ref: tx.business_ref.cloned(),
                entries: tx.entries.to_vec(),
                seqs: (0..tx.entries.len()).map(|i| tx.entry_seqs.get(i).copied().unwrap_or(i as i32 + 1)).collect(),
                reversed_by: None,
                held: tx.held_step.is_some(),
            },
        );
        if let Some(step) = tx.held_step {
            self.writes.holds_opened.push(HoldRow {
                tenant_id: tx.tenant_id,
                saga_id: ledger_tx_id,
                step: step as i32,
                created_at: now,
            });
        }
        let event_entries: Vec<Value> =
            tx.entries.iter().map(|e| outbox_form::stored_entry(e.account_id, e.side, e.amount_minor, e.currency)).collect();
        let event_type = if tx.reverses_ledger_tx_id.is_some() { "transaction.reversed" } else { "transaction.posted" };
        let payload = json!({
            "type": tx.tx_type,
            "commit_seq": commit_seq,
            "occurred_at": occurred_at,
            "posted_at": now,
            "reverses_ledger_tx_id": tx.reverses_ledger_tx_id,
            "external_ref": tx.external_ref,
            "business_ref": tx.business_ref,
            "entries": event_entries,
        });
        self.event(tx.tenant_id, "transaction", ledger_tx_id, event_type, payload);
        Outcome::Posted(PostedTx { ledger_tx_id, posted_at: now, entries: posted_entries })
    }

    fn event(
        &mut self,
        tenant_id: Uuid,
        aggregate_type: &'static str,
        aggregate_id: Uuid,
        event_type: &'static str,
        mut payload: Value,
    ) {
        let event_id = self.ids.ledger_id(self.now(), self.input.shard_id);
        outbox_form::drop_null_keys(event_type, &mut payload);
        self.writes.outbox.push(OutboxRow {
            event_id,
            tenant_id,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            created_at: self.now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{PostCommand, ReverseCommand, SetStatusCommand};
    use crate::ids::SequentialIds;
    use crate::money::{AccountType, balance_from_totals, signed_delta};
    use proptest::prelude::*;

    const TENANT: Uuid = Uuid::from_u128(0xabc);

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + second, 0).unwrap()
    }

    fn create(code: &str, account_type: AccountType, currency: &str, allow_negative: bool) -> Command {
        Command::CreateAccount(CreateAccountCommand {
            tenant_id: TENANT,
            account_id: crate::ids::account_id(TENANT, code),
            code: code.into(),
            account_type,
            currency: Currency::parse(currency).unwrap(),
            allow_negative,
            metadata: json!({}),
        })
    }

    fn post(key: &str, legs: &[(&str, Side, i64)], currency: &str) -> Command {
        let entries = legs
            .iter()
            .map(|(code, side, amount)| EntryCommand {
                account_id: crate::ids::account_id(TENANT, code),
                side: *side,
                amount_minor: *amount,
                currency: Currency::parse(currency).unwrap(),
            })
            .collect();
        let mut command = PostCommand {
            tenant_id: TENANT,
            idempotency_key: key.into(),
            fingerprint: String::new(),
            tx_type: "TRANSFER".into(),
            entries,
            external_ref: None,
            business_ref: None,
            occurred_at: None,
            actor: "test".into(),
            reason_code: None,
            metadata: json!({}),
            external_ref_held_by: None,
        };
        command.fingerprint = crate::fingerprint::fingerprint("transactions.post", &command);
        Command::Post(command)
    }

    fn transfer(key: &str, from: &str, to: &str, amount: i64) -> Command {
        post(key, &[(from, Side::Debit, amount), (to, Side::Credit, amount)], "IDR")
    }

    fn reverse(key: &str, ledger_tx_id: Uuid) -> Command {
        Command::Reverse(ReverseCommand {
            tenant_id: TENANT,
            idempotency_key: key.into(),
            fingerprint: format!("reverse-{key}-{ledger_tx_id}"),
            ledger_tx_id,
            actor: "ops".into(),
            reason_code: "X".into(),
        })
    }

    fn status(code: &str, status: AccountStatus) -> Command {
        Command::SetStatus(SetStatusCommand {
            tenant_id: TENANT,
            account_id: crate::ids::account_id(TENANT, code),
            status,
            actor: "ops".into(),
            reason_code: None,
        })
    }

    /// A shard in memory: applies plans the way the shell commits them.
    struct Shard {
        snapshot: Snapshot,
        next_commit_seq: i64,
        ids: SequentialIds,
        clock: i64,
        entries: Vec<EntryRow>,
        transactions: Vec<TxRow>,
        writes_of_last_run: Writes,
    }

    impl Shard {
        fn new() -> Shard {
            Shard {
                snapshot: Snapshot::default(),
                next_commit_seq: 1,
                ids: SequentialIds::default(),
                clock: 0,
                entries: vec![],
                transactions: vec![],
                writes_of_last_run: Writes::default(),
            }
        }

        fn run(&mut self, commands: &[Command]) -> Vec<Outcome> {
            self.clock += 1;
            let input = BatchInput { shard_id: 3, now: at(self.clock), next_commit_seq: self.next_commit_seq };
            let plan = plan_batch(input, &mut self.snapshot, commands, &mut self.ids);
            self.next_commit_seq = plan.next_commit_seq;
            self.entries.extend(plan.writes.entries.iter().cloned());
            self.transactions.extend(plan.writes.transactions.iter().cloned());
            self.writes_of_last_run = plan.writes;
            plan.outcomes
        }

        fn balance(&self, code: &str) -> i64 {
            self.snapshot.accounts[&crate::ids::account_id(TENANT, code)].balance_minor
        }
    }

    fn code_of(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Posted(_) => "POSTED",
            Outcome::Replay { .. } => "REPLAY",
            Outcome::ReplayRejection { .. } => "REPLAY_REJECTION",
            Outcome::Rejected(r) => r.code(),
            Outcome::Account { .. } => "ACCOUNT",
            Outcome::KeyClaimed => "KEY_CLAIMED",
            Outcome::RefClaimed => "REF_CLAIMED",
            Outcome::RefHeld { ledger_tx_id: Some(_) } => "REF_HELD_POSTED",
            Outcome::RefHeld { ledger_tx_id: None } => "REF_HELD_PENDING",
            Outcome::Completed => "COMPLETED",
            Outcome::SagaBegun(_) => "SAGA_BEGUN",
            Outcome::SagaBegunWithFirstStep(..) => "SAGA_BEGUN_WITH_STEP",
            Outcome::SagaInFlight { .. } => "SAGA_IN_FLIGHT",
            Outcome::Saga(_) => "SAGA",
            Outcome::SagaSaved { .. } => "SAGA_SAVED",
        }
    }

    fn fingerprint_of(command: &Command) -> String {
        match command {
            Command::Post(p) => p.fingerprint.clone(),
            _ => unreachable!("posts only"),
        }
    }

    fn claim(key: &str, fingerprint: &str) -> Command {
        Command::ClaimKey(ClaimKeyCommand {
            tenant_id: TENANT,
            idempotency_key: key.into(),
            fingerprint: fingerprint.into(),
            target_shard: 2,
        })
    }

    fn complete(key: &str, fingerprint: &str, completion: KeyCompletion) -> Command {
        Command::CompleteKey(CompleteKeyCommand {
            tenant_id: TENANT,
            idempotency_key: key.into(),
            fingerprint: fingerprint.into(),
            completion,
        })
    }

    fn external(reference: &str) -> ExternalRef {
        ExternalRef { ref_type: "psp".into(), reference: reference.into() }
    }

    fn claim_ref(reference: &str, key: &str) -> Command {
        Command::ClaimRef(ClaimRefCommand {
            tenant_id: TENANT,
            external_ref: external(reference),
            idempotency_key: key.into(),
            fingerprint: format!("fp-{key}"),
        })
    }

    fn complete_ref(reference: &str, key: &str, completion: RefCompletion) -> Command {
        Command::CompleteRef(CompleteRefCommand {
            tenant_id: TENANT,
            external_ref: external(reference),
            idempotency_key: key.into(),
            completion,
        })
    }

    #[test]
    fn key_claims_on_the_home_shard() {
        let mut shard = setup();
        let tx = Uuid::from_u128(77);
        let outcomes = shard.run(&[
            claim("k", "fp1"),
            claim("k", "fp1"),
            claim("k", "fp2"),
            complete("k", "fp2", KeyCompletion::Posted { ledger_tx_id: tx }),
            complete("k", "fp1", KeyCompletion::Posted { ledger_tx_id: tx }),
            claim("k", "fp1"),
            complete("k", "fp1", KeyCompletion::Released),
            claim("gone", "a"),
            complete("gone", "a", KeyCompletion::Released),
            claim("gone", "b"),
            claim("no", "x"),
            complete("no", "x", KeyCompletion::Rejected { status: 422, body: json!({"error": {"code": "INSUFFICIENT_FUNDS"}}) }),
            claim("no", "x"),
        ]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(
            codes,
            [
                "KEY_CLAIMED",
                "KEY_CLAIMED",
                "IDEMPOTENCY_CONFLICT",
                "COMPLETED",
                "COMPLETED",
                "REPLAY",
                "COMPLETED",
                "KEY_CLAIMED",
                "COMPLETED",
                "KEY_CLAIMED",
                "KEY_CLAIMED",
                "COMPLETED",
                "REPLAY_REJECTION",
            ]
        );
        assert_eq!(shard.snapshot.keys[&(TENANT, "k".to_owned())].outcome, KeyOutcome::Posted { ledger_tx_id: tx });
        let gone = &shard.snapshot.keys[&(TENANT, "gone".to_owned())];
        assert_eq!((gone.fingerprint.as_str(), &gone.outcome), ("b", &KeyOutcome::Processing { target_shard: 2 }));
    }

    #[test]
    fn a_batch_writes_one_row_per_key_the_last_decision() {
        let mut shard = setup();
        shard.clock += 1;
        let input = BatchInput { shard_id: 3, now: at(shard.clock), next_commit_seq: 1 };
        let plan = plan_batch(
            input,
            &mut shard.snapshot,
            &[claim("k", "f"), complete("k", "f", KeyCompletion::Released), claim("k", "g")],
            &mut shard.ids,
        );
        assert_eq!(plan.writes.keys.len(), 1);
        assert_eq!((plan.writes.keys[0].fingerprint.as_str(), plan.writes.keys[0].status), ("g", KeyStatus::Processing));
    }

    #[test]
    fn a_claimed_key_posts_for_its_own_request_only() {
        let mut shard = setup();
        let payment = transfer("pay", "credit", "alice", 10);
        let other = transfer("pay", "credit", "alice", 11);
        let fingerprint = fingerprint_of(&payment);
        let outcomes = shard.run(&[claim("pay", &fingerprint), other.clone(), payment.clone(), payment.clone()]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(codes, ["KEY_CLAIMED", "IDEMPOTENCY_CONFLICT", "POSTED", "REPLAY"]);
    }

    #[test]
    fn an_abandoned_request_never_posts_and_a_decided_one_keeps_its_outcome() {
        let mut shard = setup();
        let abandon = |key: &str, fingerprint: &str| {
            Command::AbandonKey(AbandonKeyCommand {
                tenant_id: TENANT,
                idempotency_key: key.into(),
                fingerprint: fingerprint.into(),
            })
        };
        let late = transfer("late", "credit", "alice", 10);
        let posted = transfer("posted", "credit", "alice", 10);
        let outcomes = shard.run(&[
            posted.clone(),
            abandon("late", &fingerprint_of(&late)),
            late.clone(),
            abandon("posted", &fingerprint_of(&posted)),
            claim("claimed", "f"),
            abandon("claimed", "f"),
        ]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(codes, ["POSTED", "REQUEST_ABANDONED", "REPLAY_REJECTION", "REPLAY", "KEY_CLAIMED", "IN_PROGRESS"]);
        let Outcome::ReplayRejection { body, .. } = &outcomes[2] else { unreachable!() };
        assert_eq!(body["error"]["code"], "REQUEST_ABANDONED", "the late copy is refused, not posted");
        assert_eq!(shard.balance("alice"), 10);
        assert_eq!(code_of(&shard.run(&[abandon("late", &fingerprint_of(&late))])[0]), "REPLAY_REJECTION", "settled once");
    }

    #[test]
    fn external_references_claimed_on_their_home_shard() {
        let mut shard = setup();
        let tx = Uuid::from_u128(5);
        let outcomes = shard.run(&[
            claim_ref("ch_1", "k1"),
            claim_ref("ch_1", "k1"),
            claim_ref("ch_1", "k2"),
            complete_ref("ch_1", "k2", RefCompletion::Bound { ledger_tx_id: Uuid::from_u128(9) }),
            complete_ref("ch_1", "k1", RefCompletion::Bound { ledger_tx_id: tx }),
            claim_ref("ch_1", "k2"),
            claim_ref("ch_2", "k3"),
            complete_ref("ch_2", "k3", RefCompletion::Released),
            claim_ref("ch_2", "k4"),
        ]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(
            codes,
            [
                "REF_CLAIMED",
                "REF_CLAIMED",
                "REF_HELD_PENDING",
                "COMPLETED",
                "COMPLETED",
                "REF_HELD_POSTED",
                "REF_CLAIMED",
                "COMPLETED",
                "REF_CLAIMED",
            ]
        );
        // a local post with a reference held at home: pending is IN_PROGRESS, posted is a duplicate
        let with_ref = |key: &str, reference: &str| {
            let Command::Post(mut p) = transfer(key, "credit", "alice", 1) else { unreachable!() };
            p.external_ref = Some(external(reference));
            Command::Post(p)
        };
        let held_elsewhere = {
            let Command::Post(mut p) = transfer("k7", "credit", "alice", 1) else { unreachable!() };
            p.external_ref_held_by = Some(tx);
            Command::Post(p)
        };
        let outcomes = shard.run(&[with_ref("k5", "ch_2"), with_ref("k6", "ch_1"), held_elsewhere, with_ref("k4", "ch_2")]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(codes, ["IN_PROGRESS", "DUPLICATE_EXTERNAL_REF", "DUPLICATE_EXTERNAL_REF", "POSTED"]);
    }

    fn setup() -> Shard {
        let mut shard = Shard::new();
        shard.run(&[
            create("cash", AccountType::Asset, "IDR", false),
            create("alice", AccountType::Liability, "IDR", false),
            create("bob", AccountType::Liability, "IDR", false),
            create("usd", AccountType::Liability, "USD", false),
            create("credit", AccountType::Liability, "IDR", true),
        ]);
        shard
    }

    #[test]
    fn a_batch_posts_exactly_the_commands_that_pass() {
        let mut shard = setup();
        let outcomes = shard.run(&[
            transfer("ok-1", "credit", "alice", 100),
            transfer("short", "alice", "bob", 101),
            transfer("ok-2", "alice", "bob", 60),
            transfer("ghost", "alice", "nobody", 1),
            post("mismatch", &[("alice", Side::Debit, 1), ("usd", Side::Credit, 1)], "IDR"),
            transfer("ok-3", "alice", "bob", 40),
            transfer("ok-1", "credit", "alice", 100),
            transfer("ok-1", "credit", "alice", 999),
            transfer("short", "alice", "bob", 101),
            transfer("empty", "alice", "bob", 1),
        ]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(
            codes,
            [
                "POSTED",
                "INSUFFICIENT_FUNDS",
                "POSTED",
                "ACCOUNT_NOT_FOUND",
                "CURRENCY_MISMATCH",
                "POSTED",
                "REPLAY",
                "IDEMPOTENCY_CONFLICT",
                "REPLAY_REJECTION",
                "INSUFFICIENT_FUNDS",
            ]
        );
        assert_eq!(shard.transactions.len(), 3);
        assert_eq!(shard.balance("alice"), 0);
        assert_eq!(shard.balance("bob"), 100);
        assert_eq!(shard.balance("credit"), -100);
        let seqs: Vec<i64> = shard.transactions.iter().map(|t| t.commit_seq).collect();
        assert_eq!(seqs, [1, 2, 3], "gap-free even with refusals in between");
    }

    #[test]
    fn status_rules_in_precedence_order() {
        let mut shard = setup();
        shard.run(&[transfer("fund", "credit", "alice", 50)]);
        let outcomes = shard.run(&[
            status("alice", AccountStatus::Frozen),
            transfer("out", "alice", "bob", 1),
            transfer("in", "credit", "alice", 1),
            status("alice", AccountStatus::Closed),
            status("bob", AccountStatus::Closed),
            transfer("to-closed", "credit", "bob", 1),
            status("bob", AccountStatus::Active),
            status("bob", AccountStatus::Closed),
            status("ghost", AccountStatus::Frozen),
        ]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(
            codes,
            [
                "ACCOUNT",
                "ACCOUNT_FROZEN",
                "POSTED",
                "ACCOUNT_BALANCE_NONZERO",
                "ACCOUNT",
                "ACCOUNT_CLOSED",
                "ACCOUNT_CLOSED",
                "ACCOUNT",
                "ACCOUNT_NOT_FOUND",
            ]
        );
    }

    #[test]
    fn reversal_mirrors_and_happens_once_even_within_one_batch() {
        let mut shard = setup();
        let outcomes = shard.run(&[transfer("fund", "credit", "alice", 70)]);
        let Outcome::Posted(original) = &outcomes[0] else { panic!("posted") };
        let outcomes = shard.run(&[
            status("alice", AccountStatus::Frozen),
            reverse("r1", original.ledger_tx_id),
            reverse("r2", original.ledger_tx_id),
            reverse("r1", original.ledger_tx_id),
        ]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(codes, ["ACCOUNT", "POSTED", "ALREADY_REVERSED", "REPLAY"]);
        let Outcome::Posted(reversal) = &outcomes[1] else { panic!("posted") };
        for (o, r) in original.entries.iter().zip(&reversal.entries) {
            assert_eq!((o.account_id, o.side.opposite(), o.amount_minor), (r.account_id, r.side, r.amount_minor));
        }
        assert_eq!(shard.balance("alice"), 0);
        assert_eq!(shard.balance("credit"), 0);
        let outcomes = shard.run(&[reverse("r3", reversal.ledger_tx_id), reverse("r4", Uuid::from_u128(9))]);
        let codes: Vec<_> = outcomes.iter().map(code_of).collect();
        assert_eq!(codes, ["INVALID_REQUEST", "TRANSACTION_NOT_FOUND"]);
    }

    #[test]
    fn events_are_stored_less_their_columns_and_published_whole() {
        let mut shard = setup();
        let created = &shard.writes_of_last_run.outbox[0];
        let alice = crate::ids::account_id(TENANT, "alice");
        let cash = crate::ids::account_id(TENANT, "cash");
        assert_eq!(
            outbox_form::published_payload(created.columns(), created.payload.clone()),
            json!({
                "event_id": created.event_id, "event_type": "account.created", "tenant_id": TENANT,
                "account_id": cash, "code": "cash", "type": "ASSET", "currency": "IDR", "allow_negative": false,
                "created_at": at(1),
            })
        );
        let outcomes = shard.run(&[transfer("t", "credit", "alice", 70), status("bob", AccountStatus::Frozen)]);
        let Outcome::Posted(posted) = &outcomes[0] else { panic!("posted") };
        let tx = &shard.writes_of_last_run.transactions[0];
        let [transfer_event, frozen_event] = &shard.writes_of_last_run.outbox[..] else { panic!("two events") };
        assert_eq!(
            transfer_event.payload,
            json!({
                "type": "TRANSFER", "commit_seq": tx.commit_seq, "occurred_at": at(2), "posted_at": at(2),
                "entries": [[crate::ids::account_id(TENANT, "credit"), "DEBIT", 70, "IDR"], [alice, "CREDIT", 70, "IDR"]],
            }),
            "stored without the row's columns and null references, entries as arrays"
        );
        assert_eq!(
            outbox_form::published_payload(transfer_event.columns(), transfer_event.payload.clone()),
            json!({
                "event_id": transfer_event.event_id, "event_type": "transaction.posted", "tenant_id": TENANT,
                "ledger_tx_id": posted.ledger_tx_id, "type": "TRANSFER", "commit_seq": tx.commit_seq,
                "occurred_at": at(2), "posted_at": at(2),
                "reverses_ledger_tx_id": null, "external_ref": null, "business_ref": null,
                "entries": [
                    {"account_id": crate::ids::account_id(TENANT, "credit"), "side": "DEBIT", "amount_minor": 70, "currency": "IDR"},
                    {"account_id": alice, "side": "CREDIT", "amount_minor": 70, "currency": "IDR"},
                ],
            })
        );
        assert_eq!(
            outbox_form::published_payload(frozen_event.columns(), frozen_event.payload.clone()),
            json!({
                "event_id": frozen_event.event_id, "event_type": "account.status_changed", "tenant_id": TENANT,
                "account_id": crate::ids::account_id(TENANT, "bob"), "from": "ACTIVE", "to": "FROZEN", "actor": "ops",
                "reason_code": null, "changed_at": at(2),
            })
        );
        shard.run(&[reverse("r", posted.ledger_tx_id)]);
        let reversal = &shard.writes_of_last_run.outbox[0];
        let published = outbox_form::published_payload(reversal.columns(), reversal.payload.clone());
        assert_eq!(published["event_type"], "transaction.reversed");
        assert_eq!(published["reverses_ledger_tx_id"], json!(posted.ledger_tx_id));
        assert_eq!(published["entries"][0]["side"], "CREDIT");
    }

    #[test]
    fn planning_is_deterministic() {
        let commands = [transfer("a", "credit", "alice", 5), transfer("b", "alice", "bob", 3), transfer("c", "alice", "bob", 3)];
        let mut first = setup();
        let mut second = setup();
        assert_eq!(first.run(&commands), second.run(&commands));
        assert_eq!(first.entries, second.entries);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Transfer { from: usize, to: usize, amount: i64 },
        Split { from: usize, to: [usize; 2], amounts: [i64; 2] },
        Reverse { pick: usize },
        Freeze { account: usize, frozen: bool },
        Retry { pick: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..6usize, 0..6usize, 1..500i64).prop_map(|(from, to, amount)| Step::Transfer { from, to, amount }),
            2 => (0..6usize, 0..6usize, 0..6usize, 1..300i64, 1..300i64)
                .prop_map(|(from, a, b, x, y)| Step::Split { from, to: [a, b], amounts: [x, y] }),
            2 => (0..1000usize).prop_map(|pick| Step::Reverse { pick }),
            1 => (0..6usize, any::<bool>()).prop_map(|(account, frozen)| Step::Freeze { account, frozen }),
            1 => (0..1000usize).prop_map(|pick| Step::Retry { pick }),
        ]
    }

    const ACCOUNTS: [(&str, AccountType, bool); 6] = [
        ("source", AccountType::Equity, true),
        ("w1", AccountType::Liability, false),
        ("w2", AccountType::Liability, false),
        ("bank", AccountType::Asset, false),
        ("fees", AccountType::Revenue, false),
        ("overdraft", AccountType::Liability, true),
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn random_histories_keep_every_invariant(steps in proptest::collection::vec(step(), 1..120), batch in 1..12usize) {
            let mut shard = Shard::new();
            shard.run(&ACCOUNTS.iter().map(|(c, t, n)| create(c, *t, "IDR", *n)).collect::<Vec<_>>());
            let mut sent: Vec<Command> = Vec::new();
            let mut posted: Vec<Uuid> = Vec::new();
            let mut commands = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                let command = match step {
                    Step::Transfer { from, to, amount } => transfer(&format!("k{i}"), ACCOUNTS[*from].0, ACCOUNTS[*to].0, *amount),
                    Step::Split { from, to, amounts } => post(
                        &format!("k{i}"),
                        &[(ACCOUNTS[*from].0, Side::Debit, amounts[0] + amounts[1]),
                          (ACCOUNTS[to[0]].0, Side::Credit, amounts[0]),
                          (ACCOUNTS[to[1]].0, Side::Credit, amounts[1])],
                        "IDR",
                    ),
                    Step::Reverse { pick } if !posted.is_empty() => reverse(&format!("k{i}"), posted[pick % posted.len()]),
                    Step::Retry { pick } if !sent.is_empty() => sent[pick % sent.len()].clone(),
                    Step::Freeze { account, frozen } => status(ACCOUNTS[*account].0, if *frozen { AccountStatus::Frozen } else { AccountStatus::Active }),
                    _ => continue,
                };
                // stateless checks happen before a command reaches a shard
                if let Command::Post(p) = &command
                    && crate::validate::entries(&p.entries).is_err()
                {
                    continue;
                }
                sent.push(command.clone());
                commands.push(command);
                if commands.len() == batch {
                    for outcome in shard.run(&commands) {
                        if let Outcome::Posted(p) = outcome { posted.push(p.ledger_tx_id); }
                    }
                    commands.clear();
                }
            }
            for outcome in shard.run(&commands) {
                if let Outcome::Posted(p) = outcome { posted.push(p.ledger_tx_id); }
            }

            // every key posted at most once
            let mut keys = std::collections::HashSet::new();
            for tx in &shard.transactions {
                prop_assert!(keys.insert(tx.idempotency_key.clone()), "key {} posted twice", tx.idempotency_key);
            }
            // each transaction balances; totals balance
            let mut per_tx: HashMap<Uuid, i128> = HashMap::new();
            let (mut debits, mut credits) = (0i128, 0i128);
            for e in &shard.entries {
                let signed = if e.side == Side::Debit { e.amount_minor as i128 } else { -(e.amount_minor as i128) };
                *per_tx.entry(e.ledger_tx_id).or_default() += signed;
                if e.side == Side::Debit { debits += e.amount_minor as i128 } else { credits += e.amount_minor as i128 }
            }
            prop_assert!(per_tx.values().all(|sum| *sum == 0), "every transaction balances");
            prop_assert_eq!(debits, credits);
            // balance = sum of entries, balance_after walks, never negative where not allowed
            for (code, account_type, allow_negative) in ACCOUNTS {
                let id = crate::ids::account_id(TENANT, code);
                let state = &shard.snapshot.accounts[&id];
                let mut running = 0i64;
                let mut count = 0;
                for e in shard.entries.iter().filter(|e| e.account_id == id) {
                    running += signed_delta(account_type, e.side, e.amount_minor);
                    count += 1;
                    prop_assert_eq!(e.balance_after_minor, running);
                    if !allow_negative { prop_assert!(running >= 0, "{} went to {}", code, running); }
                }
                prop_assert_eq!(state.balance_minor, running);
                prop_assert_eq!(state.version, count);
                prop_assert_eq!(balance_from_totals(account_type, state.debits_minor as i128, state.credits_minor as i128), running as i128);
            }
            let seqs: Vec<i64> = shard.transactions.iter().map(|t| t.commit_seq).collect();
            prop_assert_eq!(seqs, (1..=shard.transactions.len() as i64).collect::<Vec<_>>());
        }
    }

    mod sagas {
        use super::*;
        use crate::command::{BeginSagaCommand, SagaProgressCommand, SagaStepCommand};
        use crate::saga::{LegHeader, PlannedStep, SagaKind, SagaStep, StepStatus, clearing_account_id};

        fn header() -> LegHeader {
            LegHeader {
                tx_type: "TRANSFER".into(),
                actor: "test".into(),
                reason_code: None,
                business_ref: None,
                external_ref: None,
                occurred_at: None,
                metadata: json!({}),
                entry_count: 2,
            }
        }

        fn leg(code: &str, side: Side, amount: i64, seq: i32) -> LegEntry {
            LegEntry {
                seq,
                entry: EntryCommand {
                    account_id: crate::ids::account_id(TENANT, code),
                    side,
                    amount_minor: amount,
                    currency: Currency::parse("IDR").unwrap(),
                },
            }
        }

        /// The plan a coordinator would send with a forward step: its action at `step` on this
        /// shard (3), and a leg on another shard that balances it, after it if the step is
        /// held (every leg but the last is), else before it.
        fn plan_around(step: usize, action: &StepAction, hold: bool) -> Vec<PlannedStep> {
            let elsewhere = |action| PlannedStep { shard: 9, action };
            let counter = match action {
                StepAction::Post { entries } => {
                    assert_eq!(entries.len(), 1, "single-entry legs; the other entry is the counter leg's");
                    let e = &entries[0];
                    let entry =
                        EntryCommand { account_id: Uuid::from_u128(0xc0), side: e.entry.side.opposite(), ..e.entry.clone() };
                    StepAction::Post { entries: vec![LegEntry { seq: 3 - e.seq, entry }] }
                }
                StepAction::ClaimReversal { of } | StepAction::Mirror { of } => StepAction::Mirror { of: *of },
            };
            let mut plan: Vec<PlannedStep> = (0..step).map(|_| elsewhere(StepAction::Post { entries: vec![] })).collect();
            plan.push(PlannedStep { shard: 3, action: action.clone() });
            if hold || matches!(action, StepAction::ClaimReversal { .. }) {
                plan.push(elsewhere(counter));
            } else {
                assert!(step >= 1, "an unheld leg is its saga's last: give it a step after the first");
                plan[0] = elsewhere(counter);
            }
            plan
        }

        fn phase_step(saga_id: Uuid, step: usize, phase: StepPhase, hold: bool, action: StepAction) -> Command {
            let mut header = header();
            if !matches!(action, StepAction::Post { .. }) {
                header.tx_type = TX_TYPE_REVERSAL.into();
            }
            let plan = if phase == StepPhase::Forward { plan_around(step, &action, hold) } else { Vec::new() };
            Command::SagaStep(Box::new(SagaStepCommand { tenant_id: TENANT, saga_id, step, phase, hold, action, header, plan }))
        }

        fn step(saga_id: Uuid, step: usize, undo: bool, action: StepAction) -> Command {
            phase_step(saga_id, step, if undo { StepPhase::Undo } else { StepPhase::Forward }, false, action)
        }

        fn held(saga_id: Uuid, step: usize, action: StepAction) -> Command {
            phase_step(saga_id, step, StepPhase::Forward, true, action)
        }

        fn release(saga_id: Uuid, step: usize, action: StepAction) -> Command {
            phase_step(saga_id, step, StepPhase::Release, false, action)
        }

        fn account<'s>(shard: &'s Shard, code: &str) -> &'s AccountState {
            &shard.snapshot.accounts[&crate::ids::account_id(TENANT, code)]
        }

        fn funded_shard() -> Shard {
            let mut shard = Shard::new();
            shard.run(&[
                create("cash", AccountType::Asset, "IDR", true),
                create("alice", AccountType::Liability, "IDR", false),
                transfer("fund", "cash", "alice", 1_000),
            ]);
            shard
        }

        fn clearing_balance(shard: &Shard) -> i64 {
            let id = clearing_account_id(TENANT, 3, Currency::parse("IDR").unwrap());
            shard.snapshot.accounts.get(&id).map_or(0, |a| a.balance_minor)
        }

        #[test]
        fn a_leg_posts_once_through_the_clearing_account_and_is_undone_once() {
            let mut shard = funded_shard();
            let saga_id = SequentialIds(900).saga_id(at(0), 1);
            let action = StepAction::Post { entries: vec![leg("alice", Side::Debit, 300, 1)] };
            let posted = shard.run(&[step(saga_id, 1, false, action.clone())]);
            let Outcome::Posted(tx) = &posted[0] else { panic!("{posted:?}") };
            assert_eq!(tx.ledger_tx_id, saga_id, "a leg carries its saga's id");
            assert_eq!(tx.entries.iter().map(|e| e.entry_seq).collect::<Vec<_>>(), vec![1, 3]);
            assert_eq!(shard.balance("alice"), 700);
            assert_eq!(clearing_balance(&shard), -300, "the clearing asset is credited: due from the other shard");
            assert_eq!(shard.run(&[step(saga_id, 1, false, action.clone())]), vec![Outcome::Replay { ledger_tx_id: saga_id }]);
            assert_eq!(shard.balance("alice"), 700, "a re-sent step posts nothing");

            let undone = shard.run(&[step(saga_id, 1, true, action.clone())]);
            let Outcome::Posted(compensation) = &undone[0] else { panic!("{undone:?}") };
            assert_eq!(shard.transactions.last().unwrap().tx_type, TX_TYPE_SAGA_COMPENSATION);
            assert_eq!(shard.transactions.last().unwrap().reverses_ledger_tx_id, Some(saga_id));
            assert_eq!((shard.balance("alice"), clearing_balance(&shard)), (1_000, 0), "exactly where it was");
            let again = shard.run(&[step(saga_id, 1, true, action)]);
            assert_eq!(again, vec![Outcome::Replay { ledger_tx_id: compensation.ledger_tx_id }]);
            assert_eq!(shard.balance("alice"), 1_000);
        }

        #[test]
        fn a_refused_step_stays_refused_and_an_undo_first_blocks_a_late_step() {
            let mut shard = funded_shard();
            let saga_id = SequentialIds(901).saga_id(at(0), 1);
            let too_much = StepAction::Post { entries: vec![leg("alice", Side::Debit, 5_000, 1)] };
            let refused = shard.run(&[step(saga_id, 1, false, too_much.clone())]);
            assert_eq!(code_of(&refused[0]), "INSUFFICIENT_FUNDS");
            shard.run(&[transfer("more", "cash", "alice", 10_000)]);
            let again = shard.run(&[step(saga_id, 1, false, too_much)]);
            assert_eq!(code_of(&again[0]), "REPLAY_REJECTION", "the same answer, even now that funds are there");
            assert_eq!(shard.balance("alice"), 11_000);

            let fine = StepAction::Post { entries: vec![leg("alice", Side::Debit, 100, 1)] };
            assert_eq!(shard.run(&[step(saga_id, 2, true, fine.clone())]), vec![Outcome::Completed]);
            let late = shard.run(&[step(saga_id, 2, false, fine)]);
            let Outcome::ReplayRejection { body, .. } = &late[0] else { panic!("{late:?}") };
            assert_eq!(body["error"]["code"], "SAGA_ABORTED");
            assert_eq!(shard.balance("alice"), 11_000, "a step that arrives after its undo never posts");
        }

        #[test]
        fn a_compensation_never_drives_a_balance_below_zero_and_is_not_stored_when_refused() {
            let mut shard = funded_shard();
            let saga_id = SequentialIds(905).saga_id(at(0), 1);
            // the leg brings 300 to alice; she spends it before the saga turns back
            let action = StepAction::Post { entries: vec![leg("alice", Side::Credit, 300, 2)] };
            assert!(matches!(shard.run(&[step(saga_id, 1, false, action.clone())])[0], Outcome::Posted(_)));
            shard.run(&[create("shop", AccountType::Liability, "IDR", false), transfer("spend", "alice", "shop", 1_300)]);
            assert_eq!(shard.balance("alice"), 0);
            let refused = shard.run(&[step(saga_id, 1, true, action.clone())]);
            assert_eq!(code_of(&refused[0]), "INSUFFICIENT_FUNDS");
            assert_eq!(shard.balance("alice"), 0, "never below zero");
            // not stored: once the money is back, the same undo posts
            shard.run(&[transfer("refund", "shop", "alice", 300)]);
            let undone = shard.run(&[step(saga_id, 1, true, action)]);
            assert!(matches!(undone[0], Outcome::Posted(_)), "{undone:?}");
            assert_eq!(shard.balance("alice"), 0);
            assert_eq!(clearing_balance(&shard), 0);
        }

        #[test]
        fn a_held_leg_cannot_be_spent_or_closed_and_its_compensation_always_posts() {
            let mut shard = funded_shard();
            let saga_id = SequentialIds(906).saga_id(at(0), 1);
            let incoming = StepAction::Post { entries: vec![leg("alice", Side::Credit, 300, 2)] };
            assert!(matches!(shard.run(&[held(saga_id, 0, incoming.clone())])[0], Outcome::Posted(_)));
            assert_eq!((shard.balance("alice"), account(&shard, "alice").held_minor()), (1_300, 300));
            shard.run(&[create("shop", AccountType::Liability, "IDR", false)]);
            let refused = shard.run(&[transfer("spend-all", "alice", "shop", 1_300)]);
            let Outcome::Rejected(rejection) = &refused[0] else { panic!("{refused:?}") };
            assert_eq!(rejection.to_body()["error"]["details"]["held_minor"], 300, "{rejection:?}");
            assert!(matches!(shard.run(&[transfer("spend-own", "alice", "shop", 1_000)])[0], Outcome::Posted(_)));
            let undone = shard.run(&[step(saga_id, 0, true, incoming)]);
            assert!(matches!(undone[0], Outcome::Posted(_)), "the leg undoes although alice spent all she could: {undone:?}");
            assert_eq!((shard.balance("alice"), clearing_balance(&shard)), (0, 0));
            assert!(!account(&shard, "alice").is_settling());
            assert_eq!(shard.writes_of_last_run.holds_settled, vec![saga_id]);

            // a held leg that takes alice to zero: she cannot be closed until it settles
            shard.run(&[transfer("refill", "cash", "alice", 500)]);
            let saga_id = SequentialIds(907).saga_id(at(0), 1);
            let outgoing = StepAction::Post { entries: vec![leg("alice", Side::Debit, 500, 1)] };
            assert!(matches!(shard.run(&[held(saga_id, 0, outgoing.clone())])[0], Outcome::Posted(_)));
            assert_eq!(shard.balance("alice"), 0);
            assert_eq!(code_of(&shard.run(&[status("alice", AccountStatus::Closed)])[0]), "IN_PROGRESS");
            assert!(matches!(shard.run(&[step(saga_id, 0, true, outgoing)])[0], Outcome::Posted(_)));
            assert_eq!(shard.balance("alice"), 500, "the compensation credits a still open account");
        }

        #[test]
        fn a_released_leg_is_final_and_spendable_and_releases_once() {
            let mut shard = funded_shard();
            let saga_id = SequentialIds(908).saga_id(at(0), 1);
            let incoming = StepAction::Post { entries: vec![leg("alice", Side::Credit, 300, 2)] };
            let never_posted = release(SequentialIds(909).saga_id(at(0), 1), 0, incoming.clone());
            assert_eq!(code_of(&shard.run(&[never_posted])[0]), "INVALID_REQUEST");
            shard.run(&[held(saga_id, 0, incoming.clone())]);
            assert_eq!(shard.run(&[release(saga_id, 0, incoming.clone())]), vec![Outcome::Completed]);
            assert_eq!(shard.writes_of_last_run.holds_settled, vec![saga_id]);
            assert_eq!((shard.balance("alice"), account(&shard, "alice").held_minor()), (1_300, 0));
            assert!(!shard.snapshot.accounts.values().any(AccountState::is_settling), "the clearing side settles too");
            assert_eq!(shard.run(&[release(saga_id, 0, incoming)]), vec![Outcome::Completed]);
            assert!(shard.writes_of_last_run.holds_settled.is_empty(), "released once");
            shard.run(&[create("shop", AccountType::Liability, "IDR", false)]);
            assert!(matches!(shard.run(&[transfer("spend-all", "alice", "shop", 1_300)])[0], Outcome::Posted(_)));
        }

        #[test]
        fn clearing_accounts_are_the_ledgers_own() {
            let mut shard = funded_shard();
            let saga_id = SequentialIds(910).saga_id(at(0), 1);
            shard.run(&[step(saga_id, 1, false, StepAction::Post { entries: vec![leg("alice", Side::Debit, 10, 1)] })]);
            let clearing = clearing_account_id(TENANT, 3, Currency::parse("IDR").unwrap());
            let entries = vec![
                EntryCommand {
                    account_id: clearing,
                    side: Side::Debit,
                    amount_minor: 5,
                    currency: Currency::parse("IDR").unwrap(),
                },
                EntryCommand {
                    account_id: crate::ids::account_id(TENANT, "alice"),
                    side: Side::Credit,
                    amount_minor: 5,
                    currency: Currency::parse("IDR").unwrap(),
                },
            ];
            let Command::Post(mut direct) = transfer("direct", "cash", "alice", 5) else { unreachable!() };
            direct.entries = entries;
            assert_eq!(code_of(&shard.run(&[Command::Post(direct)])[0]), "FORBIDDEN");
            let close = Command::SetStatus(SetStatusCommand {
                tenant_id: TENANT,
                account_id: clearing,
                status: AccountStatus::Frozen,
                actor: "ops".into(),
                reason_code: None,
            });
            assert_eq!(code_of(&shard.run(&[close])[0]), "FORBIDDEN");
            let into_clearing = LegEntry {
                seq: 1,
                entry: EntryCommand {
                    account_id: clearing,
                    side: Side::Credit,
                    amount_minor: 5,
                    currency: Currency::parse("IDR").unwrap(),
                },
            };
            let leg = step(SequentialIds(911).saga_id(at(0), 1), 1, false, StepAction::Post { entries: vec![into_clearing] });
            assert_eq!(code_of(&shard.run(&[leg])[0]), "FORBIDDEN", "not through a saga leg either");
        }

        #[derive(Debug, Clone)]
        enum HoldOp {
            Open { account: usize, side: Side, amount: i64 },
            Transfer { from: usize, to: usize, amount: i64 },
            SetStatus { account: usize, status: AccountStatus },
            Settle { pick: usize, posted: bool },
        }

        fn hold_op() -> impl Strategy<Value = HoldOp> {
            let side = prop_oneof![Just(Side::Debit), Just(Side::Credit)];
            let status = prop_oneof![Just(AccountStatus::Active), Just(AccountStatus::Frozen), Just(AccountStatus::Closed)];
            prop_oneof![
                3 => (0..ACCOUNTS.len(), side, 1i64..400).prop_map(|(account, side, amount)| HoldOp::Open { account, side, amount }),
                4 => (0..ACCOUNTS.len(), 0..ACCOUNTS.len(), 1i64..400).prop_map(|(from, to, amount)| HoldOp::Transfer { from, to, amount }),
                1 => (0..ACCOUNTS.len(), status).prop_map(|(account, status)| HoldOp::SetStatus { account, status }),
                3 => (0..1000usize, any::<bool>()).prop_map(|(pick, posted)| HoldOp::Settle { pick, posted }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

            /// Whatever clients do to the accounts while saga legs are held on them (spend,
            /// freeze, try to close), every held leg can still be undone, and once all legs
            /// have settled nothing is left unsettled.
            #[test]
            fn a_held_leg_can_always_be_undone(ops in proptest::collection::vec(hold_op(), 1..80)) {
                let mut shard = Shard::new();
                shard.run(&ACCOUNTS.iter().map(|(c, t, n)| create(c, *t, "IDR", *n)).collect::<Vec<_>>());
                shard.run(&[transfer("seed-w1", "source", "w1", 500)]);
                let mut open: Vec<(Uuid, StepAction)> = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    match op {
                        HoldOp::Open { account, side, amount } => {
                            let saga_id = SequentialIds(10_000 + i as u128).saga_id(at(0), 1);
                            let action = StepAction::Post { entries: vec![leg(ACCOUNTS[*account].0, *side, *amount, 1)] };
                            if let Outcome::Posted(_) = shard.run(&[held(saga_id, 0, action.clone())])[0] {
                                open.push((saga_id, action));
                            }
                        }
                        HoldOp::Transfer { from, to, amount } if from != to => {
                            shard.run(&[transfer(&format!("t{i}"), ACCOUNTS[*from].0, ACCOUNTS[*to].0, *amount)]);
                        }
                        HoldOp::SetStatus { account, status: to } => {
                            shard.run(&[status(ACCOUNTS[*account].0, *to)]);
                        }
                        HoldOp::Settle { pick, posted } if !open.is_empty() => {
                            let (saga_id, action) = open.remove(pick % open.len());
                            if *posted {
                                prop_assert_eq!(shard.run(&[release(saga_id, 0, action)]), vec![Outcome::Completed]);
                            } else {
                                let undone = shard.run(&[step(saga_id, 0, true, action)]);
                                prop_assert!(matches!(undone[0], Outcome::Posted(_)), "undo refused: {:?}", undone);
                            }
                        }
                        _ => {}
                    }
                }
                for (saga_id, action) in open.drain(..) {
                    let undone = shard.run(&[step(saga_id, 0, true, action)]);
                    prop_assert!(matches!(undone[0], Outcome::Posted(_)), "undo refused: {:?}", undone);
                }
                prop_assert!(!shard.snapshot.accounts.values().any(AccountState::is_settling), "all settled");
                for (code, account_type, allow_negative) in ACCOUNTS {
                    let id = crate::ids::account_id(TENANT, code);
                    let mut running = 0i64;
                    for e in shard.entries.iter().filter(|e| e.account_id == id) {
                        running += signed_delta(account_type, e.side, e.amount_minor);
                        if !allow_negative { prop_assert!(running >= 0, "{} went to {}", code, running); }
                    }
                    let state = &shard.snapshot.accounts[&id];
                    prop_assert_eq!(state.balance_minor, running);
                    if state.status == AccountStatus::Closed { prop_assert_eq!(state.balance_minor, 0); }
                }
            }
        }

        #[test]
        fn the_home_shard_runs_its_own_first_step_with_the_opening() {
            let mut shard = funded_shard();
            let mut record = draft("with-step", "f");
            record.steps = vec![
                SagaStep::new(3, StepAction::Post { entries: vec![leg("alice", Side::Debit, 300, 1)] }),
                SagaStep::new(1, StepAction::Post { entries: vec![leg("bob", Side::Credit, 300, 2)] }),
            ];
            let begin_cmd = BeginSagaCommand { record: record.clone(), run_first_step: true };
            let outcome = shard.run(&[Command::BeginSaga(Box::new(begin_cmd.clone()))]).remove(0);
            let Outcome::SagaBegunWithFirstStep(opened, first) = outcome else { panic!("{outcome:?}") };
            let Outcome::Posted(leg_tx) = *first else { panic!("{first:?}") };
            assert_eq!(leg_tx.ledger_tx_id, opened.saga_id);
            assert_eq!(shard.balance("alice"), 700);
            // the same step sent again by a coordinator replays
            let again = shard.run(&[Command::SagaStep(Box::new(begin_cmd.first_step(opened.saga_id)))]);
            assert_eq!(again, vec![Outcome::Replay { ledger_tx_id: opened.saga_id }]);
            assert_eq!(shard.balance("alice"), 700);
            // a first step refused is stored like any step; a first step elsewhere is not run
            let mut refused = draft("refused-first", "f");
            refused.steps = vec![
                SagaStep::new(3, StepAction::Post { entries: vec![leg("alice", Side::Debit, 5_000, 1)] }),
                SagaStep::new(1, StepAction::Post { entries: vec![leg("bob", Side::Credit, 5_000, 2)] }),
            ];
            let begin_cmd = BeginSagaCommand { record: refused.clone(), run_first_step: true };
            let outcome = shard.run(&[Command::BeginSaga(Box::new(begin_cmd.clone()))]).remove(0);
            let Outcome::SagaBegunWithFirstStep(opened, first) = outcome else { panic!("{outcome:?}") };
            assert_eq!(code_of(&first), "INSUFFICIENT_FUNDS");
            let again = shard.run(&[Command::SagaStep(Box::new(begin_cmd.first_step(opened.saga_id)))]);
            assert_eq!(code_of(&again[0]), "REPLAY_REJECTION");
            let elsewhere = BeginSagaCommand { record: draft("elsewhere", "f"), run_first_step: true };
            assert!(matches!(shard.run(&[Command::BeginSaga(Box::new(elsewhere))])[0], Outcome::SagaBegun(_)));
        }

        #[test]
        fn a_saga_that_posted_releases_its_home_leg_with_the_log() {
            let mut shard = funded_shard();
            let mut record = draft("home-leg", "f");
            record.steps = vec![
                SagaStep::new(3, StepAction::Post { entries: vec![leg("alice", Side::Debit, 300, 1)] }),
                SagaStep::new(1, StepAction::Post { entries: vec![leg("bob", Side::Credit, 300, 2)] }),
            ];
            let begin = BeginSagaCommand { record: record.clone(), run_first_step: true };
            let outcome = shard.run(&[Command::BeginSaga(Box::new(begin))]).remove(0);
            let Outcome::SagaBegunWithFirstStep(opened, _) = outcome else { panic!("{outcome:?}") };
            assert!(account(&shard, "alice").is_settling(), "the first of two legs is held");
            let mut done = (*opened).clone();
            done.record_step(0, crate::saga::StepResult::Posted, at(5));
            done.record_step(1, crate::saga::StepResult::Posted, at(5));
            done.finish(json!({}), at(5));
            let command = SagaProgressCommand { record: done };
            assert_eq!(command.home_release().map(|r| r.step), Some(0));
            let saved = shard.run(&[Command::SagaProgress(Box::new(command))]);
            assert!(matches!(saved[0], Outcome::SagaSaved { .. }), "{saved:?}");
            assert_eq!(shard.writes_of_last_run.holds_settled, vec![opened.saga_id]);
            assert!(!shard.snapshot.accounts.values().any(AccountState::is_settling));
        }

        fn draft(key: &str, fingerprint: &str) -> SagaRecord {
            let entries = vec![leg("x", Side::Debit, 5, 1), leg("y", Side::Credit, 5, 2)];
            let steps = vec![SagaStep::new(1, StepAction::Post { entries })];
            SagaRecord::draft(TENANT, key, fingerprint, SagaKind::Post, header(), steps, at(0))
        }

        fn begin(shard: &mut Shard, key: &str, fingerprint: &str) -> Outcome {
            let begin = BeginSagaCommand { record: draft(key, fingerprint), run_first_step: false };
            shard.run(&[Command::BeginSaga(Box::new(begin))]).remove(0)
        }

        fn progress(shard: &mut Shard, record: &SagaRecord) -> SagaRecord {
            let outcome = shard.run(&[Command::SagaProgress(Box::new(SagaProgressCommand { record: record.clone() }))]);
            match &outcome[0] {
                Outcome::SagaSaved { .. } => shard.snapshot.sagas[&record.saga_id].clone(),
                Outcome::Saga(stored) => (**stored).clone(),
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn a_saga_holds_its_key_until_it_ends_and_then_replays() {
            let mut shard = Shard::new();
            let Outcome::SagaBegun(record) = begin(&mut shard, "k", "f") else { panic!() };
            assert!(crate::ids::is_saga_id(record.saga_id));
            assert_eq!(begin(&mut shard, "k", "f"), Outcome::SagaInFlight { saga_id: record.saga_id });
            assert_eq!(code_of(&begin(&mut shard, "k", "other")), "IDEMPOTENCY_CONFLICT");
            assert_eq!(code_of(&shard.run(&[transfer("k", "a", "b", 1)])[0]), "IDEMPOTENCY_CONFLICT");

            let mut done = (*record).clone();
            done.record_step(0, crate::saga::StepResult::Posted, at(5));
            done.finish(json!({"ledger_tx_id": record.saga_id}), at(5));
            let stored = progress(&mut shard, &done);
            assert_eq!(stored.state, SagaState::Posted);
            assert_eq!(stored.steps[0].status, StepStatus::Posted);
            assert_eq!(progress(&mut shard, &record), stored, "a stale record never moves the saga back");
            assert_eq!(begin(&mut shard, "k", "f"), Outcome::Replay { ledger_tx_id: record.saga_id });
        }

        #[test]
        fn a_turned_back_saga_stores_its_refusal_as_a_single_shard_request_would() {
            let mut shard = Shard::new();
            for (key, status, code, stored) in
                [("funds", 422, "INSUFFICIENT_FUNDS", true), ("missing", 404, "ACCOUNT_NOT_FOUND", false)]
            {
                let Outcome::SagaBegun(record) = begin(&mut shard, key, "f") else { panic!() };
                let mut done = (*record).clone();
                let body = json!({"error": {"code": code, "message": "", "details": {}}});
                done.record_step(0, crate::saga::StepResult::Refused { status, body: body.clone() }, at(5));
                done.finish(body, at(5));
                assert_eq!(progress(&mut shard, &done).state, SagaState::Compensated);
                let again = begin(&mut shard, key, "f");
                if stored {
                    assert!(matches!(again, Outcome::ReplayRejection { status: 422, .. }), "{again:?}");
                } else {
                    assert!(matches!(again, Outcome::SagaBegun(_)), "a 404 consumes no key: {again:?}");
                }
            }
        }

        #[test]
        fn a_saga_transaction_is_claimed_for_reversal_once() {
            let mut shard = Shard::new();
            let Outcome::SagaBegun(record) = begin(&mut shard, "x", "f") else { panic!() };
            let mut posted = (*record).clone();
            posted.record_step(0, crate::saga::StepResult::Posted, at(5));
            posted.finish(json!({}), at(5));
            progress(&mut shard, &posted);
            let first = SequentialIds(1000).saga_id(at(6), 3);
            let second = SequentialIds(2000).saga_id(at(6), 3);
            let claim = StepAction::ClaimReversal { of: record.saga_id };
            assert_eq!(shard.run(&[step(first, 0, false, claim.clone())]), vec![Outcome::Completed]);
            assert_eq!(shard.run(&[step(first, 0, false, claim.clone())]), vec![Outcome::Completed]);
            assert_eq!(code_of(&shard.run(&[step(second, 0, false, claim.clone())])[0]), "ALREADY_REVERSED");
            assert_eq!(shard.snapshot.sagas[&record.saga_id].reversed_by, Some(first));
            // the first reversal turned back: its claim is released, and a later one may claim
            assert_eq!(shard.run(&[step(first, 0, true, claim.clone())]), vec![Outcome::Completed]);
            assert_eq!(shard.snapshot.sagas[&record.saga_id].reversed_by, None);
            let third = SequentialIds(3000).saga_id(at(7), 3);
            assert_eq!(shard.run(&[step(third, 0, false, claim)]), vec![Outcome::Completed]);
            assert_eq!(shard.snapshot.sagas[&record.saga_id].reversed_by, Some(third));
        }
    }
}
