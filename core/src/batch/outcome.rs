//! What the planner reads (the prefetched [`Snapshot`]) and what it decides per command
//! ([`Outcome`]).

use crate::account::AccountState;
use crate::command::{EntryCommand, ExternalRef};
use crate::currency::Currency;
use crate::money::Side;
use crate::rejection::Rejection;
use crate::saga::SagaRecord;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;
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
