//! The state of an account as its shard writer holds it in memory: enough to decide any
//! command without reading the database, and nothing more (metadata stays in the
//! database; only a digest of the creation attributes is kept, to answer a repeated
//! `accounts.create`).

use crate::currency::Currency;
use crate::money::{AccountType, Side, signed_delta};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccountStatus {
    Active,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "ACTIVE",
            AccountStatus::Frozen => "FROZEN",
            AccountStatus::Closed => "CLOSED",
        }
    }

    pub fn parse(text: &str) -> Option<AccountStatus> {
        match text {
            "ACTIVE" => Some(AccountStatus::Active),
            "FROZEN" => Some(AccountStatus::Frozen),
            "CLOSED" => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

/// Digest of the attributes fixed at creation (type, currency, allow_negative, metadata).
pub type AttributesDigest = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub account_type: AccountType,
    pub currency: Currency,
    pub status: AccountStatus,
    pub allow_negative: bool,
    pub balance_minor: i64,
    pub debits_minor: i64,
    pub credits_minor: i64,
    /// Number of entries applied to the account.
    pub version: i64,
    pub last_entry_id: Option<Uuid>,
    pub attributes_digest: AttributesDigest,
}

/// The effect of one entry on an account, computed before anything is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryEffect {
    pub balance_after_minor: i64,
    pub debits_after_minor: i64,
    pub credits_after_minor: i64,
}

impl AccountState {
    /// What posting `amount_minor` on `side` would leave, or `None` if a total would
    /// leave the 64-bit range.
    pub fn effect_of(&self, side: Side, amount_minor: i64) -> Option<EntryEffect> {
        let delta = signed_delta(self.account_type, side, amount_minor);
        let balance_after_minor = self.balance_minor.checked_add(delta)?;
        let (debits_after_minor, credits_after_minor) = match side {
            Side::Debit => (self.debits_minor.checked_add(amount_minor)?, self.credits_minor),
            Side::Credit => (self.debits_minor, self.credits_minor.checked_add(amount_minor)?),
        };
        Some(EntryEffect { balance_after_minor, debits_after_minor, credits_after_minor })
    }

    /// Whether an entry on `side` lowers the balance (what FROZEN blocks).
    pub fn is_outgoing(&self, side: Side) -> bool {
        side != self.account_type.normal_side()
    }

    pub fn apply(&mut self, effect: EntryEffect, entry_id: Uuid) {
        self.balance_minor = effect.balance_after_minor;
        self.debits_minor = effect.debits_after_minor;
        self.credits_minor = effect.credits_after_minor;
        self.version += 1;
        self.last_entry_id = Some(entry_id);
        debug_assert_eq!(
            crate::money::balance_from_totals(self.account_type, self.debits_minor as i128, self.credits_minor as i128),
            self.balance_minor as i128,
            "balance must equal the signed difference of its totals"
        );
    }
}
