//! Router ↔ shard node messages. JSON, like the public protocol: simple to inspect with
//! `nats sub`, and the shard's database work dominates the cost of a request.

pub use crate::shard_reply::ShardReply;
use ledger_core::command::{Command, ExternalRef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// Externally tagged: an internally tagged enum would buffer every message before decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardRequest {
    /// A write, decided and committed by the shard's single writer.
    Write {
        command: Box<Command>,
    },
    /// Several writes in one message: they reach the writer together, so they commit in
    /// the same batch; the reply's body is the array of their replies, in order.
    WriteBatch {
        commands: Vec<Command>,
    },
    GetAccount {
        tenant_id: Uuid,
        account_id: Uuid,
    },
    Statement {
        tenant_id: Uuid,
        query: StatementQuery,
    },
    GetTransaction {
        tenant_id: Uuid,
        by: TransactionLookup,
    },
    /// The reply a post or reversal gave, for a replay decided elsewhere: from the journal,
    /// or, for a saga whose log is on this shard, the reply the saga stored. Answered only
    /// for the tenant that posted it.
    PostReply {
        tenant_id: Uuid,
        ledger_tx_id: Uuid,
    },
    /// Which of these accounts exist, with their currency and type.
    AccountFacts {
        tenant_id: Uuid,
        account_ids: Vec<Uuid>,
    },
    /// A saga log whose home is this shard.
    GetSaga {
        tenant_id: Uuid,
        saga_id: Uuid,
    },
    /// Unfinished sagas whose log has not moved for `idle_ms`, oldest first.
    StaleSagas {
        idle_ms: u64,
        limit: u32,
    },
    /// Claims on this (home) shard whose request has not been heard of for `idle_ms`.
    StaleClaims {
        idle_ms: u64,
        limit: u32,
    },
    /// This shard's transaction object of a saga leg (entries of this shard only).
    GetLeg {
        tenant_id: Uuid,
        ledger_tx_id: Uuid,
    },
    Audit,
    /// Recompute the balance projection from the journal, through the shard's writer.
    RebuildBalances,
}

/// One shard's answer to [`ShardRequest::RebuildBalances`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuiltBalances {
    pub shard_id: u16,
    /// How many balance rows differed from their entries (or held legs) and were rewritten.
    pub corrected_count: i64,
    /// The first 100 of them.
    pub corrected: Vec<Uuid>,
}

/// Answers to claims and completions ([`ShardReply::Claim`]). Refusals (a conflict, a
/// replayed rejection) come back as [`ShardReply::Refused`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimAnswer {
    Claimed,
    /// The key already posted this transaction (on the shard its id names).
    Replay {
        ledger_tx_id: Uuid,
    },
    /// Another request holds the external reference; posted if the id is known.
    Held {
        ledger_tx_id: Option<Uuid>,
    },
    Completed,
    /// A saga opened on this (home) shard: its id and opening time (the rest of its log
    /// is the draft the coordinator sent).
    SagaBegun {
        saga_id: Uuid,
        created_at: chrono::DateTime<chrono::Utc>,
        /// The first step's reply, when the home shard executed it with the opening.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_step: Option<Box<ShardReply>>,
    },
    /// A progress record stored as sent.
    SagaSaved {
        updated_at: chrono::DateTime<chrono::Utc>,
    },
    /// The key belongs to a saga still running.
    SagaInFlight {
        saga_id: Uuid,
    },
    /// A progress record ignored (it would have moved the saga back): the log as stored.
    Saga {
        record: Box<ledger_core::saga::SagaRecord>,
    },
}

/// A lookup this shard cannot finish itself: the body `{"redirect": ...}` of a 200 reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// The transaction lives on the shard its id names.
    Transaction { ledger_tx_id: Uuid },
    /// The key was claimed here for a request that this shard decided; ask it.
    KeyOnShard { shard_id: u16 },
    /// A cross-shard transaction: its log is here, its legs are on these shards.
    Saga { record: Box<ledger_core::saga::SagaRecord> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementQuery {
    pub account_id: Uuid,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: u32,
    /// Commit sequence after which to continue.
    pub after_commit_seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionLookup {
    Id(Uuid),
    IdempotencyKey(String),
    ExternalRef(ExternalRef),
}

/// The answer to [`ShardRequest::StaleClaims`], oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StaleClaims {
    pub keys: Vec<StaleKeyClaim>,
    pub refs: Vec<StaleRefClaim>,
}

/// A key claimed on this shard for a request that `target_shard` decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleKeyClaim {
    pub tenant_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub target_shard: u16,
}

/// An external reference claimed on this shard by the request with `owner_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleRefClaim {
    pub tenant_id: Uuid,
    pub external_ref: ExternalRef,
    pub owner_key: String,
    /// `None` for claims written before the fingerprint was kept.
    pub owner_fingerprint: Option<String>,
}

/// One shard's part of `ledger.v1.admin.audit`: what its database proves about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardAudit {
    pub shard_id: u16,
    pub accounts: i64,
    pub transactions: i64,
    /// Accounts whose stored balance, totals or version differ from their entries.
    pub projection_drift: Vec<Uuid>,
    /// Transactions whose entries do not balance per currency on this shard (a saga leg
    /// balances on its own shard through the clearing account).
    pub unbalanced_transactions: Vec<Uuid>,
    /// Sum of entries per currency on this shard.
    pub totals: Vec<CurrencyTotals>,
    /// Balance of the clearing accounts per tenant and currency.
    pub clearing: Vec<ClearingTotal>,
    pub sagas_in_flight: Vec<SagaInFlight>,
    /// Saga legs posted held on this shard and not settled yet (a saga in flight has some).
    #[serde(default)]
    pub held_legs: Vec<HeldLeg>,
    /// Accounts whose unsettled amounts differ from the entries of their held legs.
    #[serde(default)]
    pub unsettled_drift: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldLeg {
    pub saga_id: Uuid,
    pub tenant_id: Uuid,
    pub step: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    pub currency: String,
    pub debits_minor: i128,
    pub credits_minor: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearingTotal {
    pub tenant_id: Uuid,
    pub currency: String,
    pub balance_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaInFlight {
    pub saga_id: Uuid,
    pub tenant_id: Uuid,
    pub state: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// What a shard knows about accounts, for a saga's plan: which exist, their currency and
/// type (all fixed at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub account_id: Uuid,
    pub currency: String,
    pub account_type: ledger_core::money::AccountType,
}
