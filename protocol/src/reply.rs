//! Reply bodies of docs/PROTOCOL.md. Times are serialized with [`crate::format_time`].

use chrono::{DateTime, Utc};
use ledger_core::batch::{PostedEntry, PostedTx};
use ledger_core::command::ExternalRef;
use ledger_core::error_code::ErrorCode;
use ledger_core::money::Side;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceObject {
    pub balance_minor: i64,
    pub debits_minor: i64,
    pub credits_minor: i64,
    /// The part of `balance_minor` that a cross-shard transaction still in flight brought
    /// in: not spendable until that transaction settles (docs/PROTOCOL.md, "Cross-shard transactions").
    pub held_minor: i64,
    pub version: i64,
    #[serde(with = "crate::time_format")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountObject {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub code: String,
    #[serde(rename = "type")]
    pub account_type: String,
    pub currency: String,
    pub status: String,
    pub allow_negative: bool,
    pub metadata: Value,
    #[serde(with = "crate::time_format")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::time_format::option")]
    pub closed_at: Option<DateTime<Utc>>,
    pub balance: BalanceObject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryReply {
    pub ledger_entry_id: Uuid,
    pub account_id: Uuid,
    pub side: Side,
    pub amount_minor: i64,
    pub currency: String,
    pub entry_seq: i32,
    pub balance_after_minor: i64,
}

impl From<&PostedEntry> for EntryReply {
    fn from(entry: &PostedEntry) -> EntryReply {
        EntryReply {
            ledger_entry_id: entry.ledger_entry_id,
            account_id: entry.account_id,
            side: entry.side,
            amount_minor: entry.amount_minor,
            currency: entry.currency.to_string(),
            entry_seq: entry.entry_seq,
            balance_after_minor: entry.balance_after_minor,
        }
    }
}

/// A transaction's status: posted, or reversed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TxStatus {
    Posted,
    Reversed,
}

/// The reply of `transactions.post` and `transactions.reverse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostReply {
    pub ledger_tx_id: Uuid,
    pub status: TxStatus,
    #[serde(with = "crate::time_format")]
    pub posted_at: DateTime<Utc>,
    pub replayed: bool,
    pub entries: Vec<EntryReply>,
}

impl PostReply {
    pub fn new(posted: &PostedTx, replayed: bool) -> PostReply {
        PostReply {
            ledger_tx_id: posted.ledger_tx_id,
            status: TxStatus::Posted,
            posted_at: posted.posted_at,
            replayed,
            entries: posted.entries.iter().map(EntryReply::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementEntry {
    pub ledger_entry_id: Uuid,
    pub ledger_tx_id: Uuid,
    pub tx_type: String,
    pub side: String,
    pub amount_minor: i64,
    pub currency: String,
    pub balance_after_minor: i64,
    #[serde(with = "crate::time_format")]
    pub effective_at: DateTime<Utc>,
    #[serde(with = "crate::time_format")]
    pub posted_at: DateTime<Utc>,
    pub business_ref: Option<String>,
    pub external_ref: Option<ExternalRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementReply {
    pub entries: Vec<StatementEntry>,
    pub next_cursor: Option<String>,
}

/// The reply of `transactions.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionObject {
    pub ledger_tx_id: Uuid,
    #[serde(rename = "type")]
    pub tx_type: String,
    pub status: TxStatus,
    pub entries: Vec<EntryReply>,
    pub reverses_ledger_tx_id: Option<Uuid>,
    pub reversed_by_ledger_tx_id: Option<Uuid>,
    #[serde(with = "crate::time_format")]
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "crate::time_format")]
    pub posted_at: DateTime<Utc>,
    pub actor: String,
    pub business_ref: Option<String>,
    pub external_ref: Option<ExternalRef>,
    pub reason_code: Option<String>,
    pub metadata: Value,
}

/// A refusal's body: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
}
