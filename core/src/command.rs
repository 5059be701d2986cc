//! Validated write commands as a shard writer receives them. Built only by [`crate::validate`]
//! (or by tests), so a command that exists has passed every stateless check.

use crate::account::{AccountStatus, AttributesDigest};
use crate::currency::Currency;
use crate::money::{AccountType, Side};
use crate::saga::{LegHeader, PlannedStep, SagaRecord, StepAction, StepPhase, clearing_account_id};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExternalRef {
    #[serde(rename = "type")]
    pub ref_type: String,
    #[serde(rename = "ref")]
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCommand {
    pub account_id: Uuid,
    pub side: Side,
    pub amount_minor: i64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostCommand {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub tx_type: String,
    pub entries: Vec<EntryCommand>,
    pub external_ref: Option<ExternalRef>,
    pub business_ref: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub actor: String,
    pub reason_code: Option<String>,
    pub metadata: Value,
    /// Set by the router when the external reference's home shard (another shard) says
    /// a posted transaction already holds it. Not part of the fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref_held_by: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReverseCommand {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub ledger_tx_id: Uuid,
    pub actor: String,
    pub reason_code: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateAccountCommand {
    pub tenant_id: Uuid,
    pub account_id: Uuid,
    pub code: String,
    pub account_type: AccountType,
    pub currency: Currency,
    pub allow_negative: bool,
    pub metadata: Value,
}

impl CreateAccountCommand {
    pub fn attributes_digest(&self) -> AttributesDigest {
        crate::fingerprint::attributes_digest(self.account_type, self.currency, self.allow_negative, &self.metadata)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetStatusCommand {
    pub tenant_id: Uuid,
    pub account_id: Uuid,
    pub status: AccountStatus,
    pub actor: String,
    pub reason_code: Option<String>,
}

/// Claims an idempotency key on its home shard for a request that another shard (the
/// target) will decide: this is what makes a key unique across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimKeyCommand {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub target_shard: u16,
}

/// What the target shard decided, recorded on the key's home shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyCompletion {
    Posted {
        ledger_tx_id: Uuid,
    },
    Rejected {
        status: u16,
        body: Value,
    },
    /// The request was refused in a way that consumes no key (400, 404): free it again.
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteKeyCommand {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub completion: KeyCompletion,
}

/// Claims an external reference on its home shard for the request with this key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRefCommand {
    pub tenant_id: Uuid,
    pub external_ref: ExternalRef,
    pub idempotency_key: String,
    /// The claiming request's fingerprint, kept with the claim so that the claim sweeper
    /// can mark that very request abandoned.
    #[serde(default)]
    pub fingerprint: String,
}

/// Settles the key of a request whose claims were abandoned (its router died before it
/// recorded the outcome): the outcome if the key was decided on this shard, otherwise
/// the key is refused from now on with `REQUEST_ABANDONED`, so that a late copy of the
/// request can never post. Sent by a router's claim sweeper to the shard that decides the
/// request (`router/src/claims.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbandonKeyCommand {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefCompletion {
    Bound { ledger_tx_id: Uuid },
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteRefCommand {
    pub tenant_id: Uuid,
    pub external_ref: ExternalRef,
    pub idempotency_key: String,
    pub completion: RefCompletion,
}

/// Opens a saga on the home shard of its idempotency key: claims the key and writes the
/// saga log (`record`, whose id and times the home shard assigns) in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeginSagaCommand {
    pub record: SagaRecord,
    /// Also execute the first step, in the same database transaction, when it is on this
    /// (home) shard: one round trip fewer for the common case of a key homed with the
    /// accounts it debits. The coordinator asks only when nothing must come first (an
    /// external reference is claimed before any step).
    #[serde(default)]
    pub run_first_step: bool,
}

impl BeginSagaCommand {
    /// The first step as a step command, once the home shard has named the saga.
    pub fn first_step(&self, saga_id: Uuid) -> SagaStepCommand {
        SagaStepCommand {
            tenant_id: self.record.tenant_id,
            saga_id,
            step: 0,
            phase: StepPhase::Forward,
            hold: self.record.holds(0),
            action: self.record.steps[0].action.clone(),
            header: self.record.header.clone(),
            plan: self.record.plan(),
        }
    }

    /// Whether the opening on `shard_id` also runs the first step: asked for, on this
    /// shard, and a posting leg (a reversal's first step claims another saga's log, which
    /// the opening does not read).
    pub fn runs_first_step_on(&self, shard_id: u16) -> bool {
        self.run_first_step
            && self.record.steps.first().is_some_and(|s| s.shard == shard_id && matches!(s.action, StepAction::Post { .. }))
    }
}

/// Records a coordinator's progress in the saga log; a record that would move the saga
/// backwards is ignored, and the reply carries the log as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaProgressCommand {
    pub record: SagaRecord,
}

impl SagaProgressCommand {
    /// A saga that posted releases its held leg on its home shard (if it has one there) in
    /// the same batch that writes `POSTED`: one round trip fewer than a separate release.
    pub fn home_release(&self) -> Option<SagaStepCommand> {
        let record = &self.record;
        if record.state != crate::saga::SagaState::Posted {
            return None;
        }
        let home = crate::ids::shard_of_ledger_id(record.saga_id)?;
        let step = (0..record.steps.len()).find(|step| record.holds(*step) && record.steps[*step].shard == home)?;
        Some(SagaStepCommand {
            tenant_id: record.tenant_id,
            saga_id: record.saga_id,
            step,
            phase: StepPhase::Release,
            hold: false,
            action: record.steps[step].action.clone(),
            header: record.header.clone(),
            plan: Vec::new(),
        })
    }
}

/// One step of a saga (its forward run, its undo, or the release of its hold), executed
/// on the step's shard, idempotent by (saga id, step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaStepCommand {
    pub tenant_id: Uuid,
    pub saga_id: Uuid,
    pub step: usize,
    pub phase: StepPhase,
    /// Forward only: post the leg held (see [`crate::account::Unsettled`]).
    #[serde(default)]
    pub hold: bool,
    pub action: StepAction,
    pub header: LegHeader,
    /// Forward only: the saga's whole plan, so that the shard can check that this leg is
    /// one part of a balanced transaction and held as the plan says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedStep>,
}

impl SagaStepCommand {
    /// The idempotency record of the forward step (also read by its undo and release).
    pub fn forward_key(&self) -> String {
        crate::saga::step_key(self.saga_id, self.step)
    }

    /// The transaction this step reads: the leg it undoes or releases, or the one it mirrors.
    pub fn reads_transaction(&self) -> Option<Uuid> {
        match (&self.action, self.phase) {
            (StepAction::ClaimReversal { .. }, _) => None,
            (_, StepPhase::Undo | StepPhase::Release) => Some(self.saga_id),
            (StepAction::Mirror { of }, StepPhase::Forward) => Some(*of),
            (StepAction::Post { .. }, StepPhase::Forward) => None,
        }
    }
}

/// The accounts a leg needs on `shard_id`: for a posting leg, its entries' accounts and
/// the clearing accounts that balance them (an undo, a release or a mirror takes its
/// accounts from the transaction it reads).
fn leg_accounts(action: &StepAction, phase: StepPhase, tenant_id: Uuid, shard_id: u16) -> Vec<Uuid> {
    match action {
        StepAction::Post { entries } if phase == StepPhase::Forward => entries
            .iter()
            .map(|e| e.entry.account_id)
            .chain(entries.iter().map(|e| clearing_account_id(tenant_id, shard_id, e.entry.currency)))
            .collect(),
        _ => Vec::new(),
    }
}

/// One write for a shard writer. Reads never pass through the writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateAccount(CreateAccountCommand),
    SetStatus(SetStatusCommand),
    Post(PostCommand),
    Reverse(ReverseCommand),
    ClaimKey(ClaimKeyCommand),
    CompleteKey(CompleteKeyCommand),
    ClaimRef(ClaimRefCommand),
    CompleteRef(CompleteRefCommand),
    BeginSaga(Box<BeginSagaCommand>),
    SagaProgress(Box<SagaProgressCommand>),
    SagaStep(Box<SagaStepCommand>),
    AbandonKey(AbandonKeyCommand),
}

impl Command {
    pub fn tenant_id(&self) -> Uuid {
        match self {
            Command::CreateAccount(c) => c.tenant_id,
            Command::SetStatus(c) => c.tenant_id,
            Command::Post(c) => c.tenant_id,
            Command::Reverse(c) => c.tenant_id,
            Command::ClaimKey(c) => c.tenant_id,
            Command::CompleteKey(c) => c.tenant_id,
            Command::ClaimRef(c) => c.tenant_id,
            Command::CompleteRef(c) => c.tenant_id,
            Command::BeginSaga(c) => c.record.tenant_id,
            Command::SagaProgress(c) => c.record.tenant_id,
            Command::SagaStep(c) => c.tenant_id,
            Command::AbandonKey(c) => c.tenant_id,
        }
    }

    /// Accounts whose state the command needs (besides those of the transactions it reads).
    pub fn account_ids(&self, shard_id: u16) -> Vec<Uuid> {
        match self {
            Command::CreateAccount(c) => vec![c.account_id],
            Command::SetStatus(c) => vec![c.account_id],
            Command::Post(c) => c.entries.iter().map(|e| e.account_id).collect(),
            Command::SagaStep(c) => leg_accounts(&c.action, c.phase, c.tenant_id, shard_id),
            Command::BeginSaga(c) if c.runs_first_step_on(shard_id) => {
                leg_accounts(&c.record.steps[0].action, StepPhase::Forward, c.record.tenant_id, shard_id)
            }
            _ => Vec::new(),
        }
    }

    /// The transaction the command reads on this shard (to reverse, mirror or undo it).
    pub fn reads_transaction(&self) -> Option<Uuid> {
        match self {
            Command::Reverse(r) => Some(r.ledger_tx_id),
            Command::SagaStep(step) => step.reads_transaction(),
            Command::SagaProgress(progress) => progress.home_release().map(|release| release.saga_id),
            _ => None,
        }
    }

    /// The client idempotency key of a post, a reversal, a claim or a saga.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            Command::Post(c) => Some(&c.idempotency_key),
            Command::Reverse(c) => Some(&c.idempotency_key),
            Command::ClaimKey(c) => Some(&c.idempotency_key),
            Command::CompleteKey(c) => Some(&c.idempotency_key),
            Command::BeginSaga(c) => Some(&c.record.idempotency_key),
            Command::SagaProgress(c) => Some(&c.record.idempotency_key),
            Command::AbandonKey(c) => Some(&c.idempotency_key),
            Command::CreateAccount(_)
            | Command::SetStatus(_)
            | Command::ClaimRef(_)
            | Command::CompleteRef(_)
            | Command::SagaStep(_) => None,
        }
    }

    /// Every idempotency record the command reads: its key, or a saga step's records (a
    /// saga's progress also reads the step it releases on its home shard).
    pub fn keys_read(&self) -> impl Iterator<Item = String> + '_ {
        let (first, second) = match self {
            Command::SagaStep(c) => {
                (Some(c.forward_key()), (c.phase == StepPhase::Undo).then(|| crate::saga::undo_key(c.saga_id, c.step)))
            }
            Command::SagaProgress(c) => {
                (Some(c.record.idempotency_key.clone()), c.home_release().map(|release| release.forward_key()))
            }
            other => (other.idempotency_key().map(str::to_owned), None),
        };
        first.into_iter().chain(second)
    }

    /// Saga logs the command reads.
    pub fn sagas_read(&self) -> Option<Uuid> {
        match self {
            Command::SagaProgress(c) => Some(c.record.saga_id),
            Command::SagaStep(c) => match c.action {
                StepAction::ClaimReversal { of } => Some(of),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether planning needs the idempotency records the command reads. The others may
    /// be planned as if their keys were new: the batch statement refuses, as a whole, to
    /// record a key that exists, and the batch is then planned again with the records.
    pub fn needs_key_records(&self) -> bool {
        match self {
            Command::ClaimKey(_) | Command::CompleteKey(_) | Command::SagaProgress(_) | Command::AbandonKey(_) => true,
            Command::SagaStep(step) => step.phase != StepPhase::Forward,
            _ => false,
        }
    }

    /// The external reference whose uniqueness the command needs to know about.
    pub fn external_ref(&self) -> Option<&ExternalRef> {
        match self {
            Command::Post(c) => c.external_ref.as_ref(),
            Command::ClaimRef(c) => Some(&c.external_ref),
            Command::CompleteRef(c) => Some(&c.external_ref),
            _ => None,
        }
    }
}
