//! Validated write commands as a shard writer receives them. Built only by [`crate::validate`]
//! (or by tests), so a command that exists has passed every stateless check.

use crate::account::{AccountStatus, AttributesDigest};
use crate::currency::Currency;
use crate::money::{AccountType, Side};
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
        }
    }

    /// Accounts whose state the command needs.
    pub fn account_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        let (single, entries) = match self {
            Command::CreateAccount(c) => (Some(c.account_id), &[][..]),
            Command::SetStatus(c) => (Some(c.account_id), &[][..]),
            Command::Post(c) => (None, &c.entries[..]),
            _ => (None, &[][..]),
        };
        single.into_iter().chain(entries.iter().map(|e| e.account_id))
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            Command::Post(c) => Some(&c.idempotency_key),
            Command::Reverse(c) => Some(&c.idempotency_key),
            Command::ClaimKey(c) => Some(&c.idempotency_key),
            Command::CompleteKey(c) => Some(&c.idempotency_key),
            Command::CreateAccount(_) | Command::SetStatus(_) | Command::ClaimRef(_) | Command::CompleteRef(_) => None,
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
