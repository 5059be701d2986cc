//! The rows a batch writes: the shell turns [`Writes`] into one database transaction.

use super::outcome::KeyStatus;
use crate::account::AccountStatus;
use crate::command::{CreateAccountCommand, ExternalRef};
use crate::currency::Currency;
use crate::money::Side;
use crate::outbox_form;
use crate::saga::SagaRecord;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeSet;
use uuid::Uuid;
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
