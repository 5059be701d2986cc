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
    /// Amounts of entries posted by saga legs whose saga has not settled yet (see
    /// [`Unsettled`]). Money a leg brought in is not spendable until it settles, and an
    /// account with unsettled amounts cannot be closed, so that the leg can always be
    /// compensated if its saga turns back.
    pub unsettled_debits_minor: i64,
    pub unsettled_credits_minor: i64,
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
    pub unsettled_debits_after_minor: i64,
    pub unsettled_credits_after_minor: i64,
}

/// How an entry changes an account's unsettled amounts.
///
/// Every leg of a saga but the last is posted *held*: its entries stay unsettled on their
/// accounts until the saga has posted everywhere (then a release settles them) or turned
/// back (then the leg's compensation settles them). The last leg needs no hold: once it
/// posts, the saga cannot turn back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsettled {
    /// An ordinary entry.
    Unchanged,
    /// An entry of a held leg: its amount becomes unsettled on its side.
    Opens,
    /// The compensating entry of a held leg's entry (the opposite side): the original's
    /// unsettled amount settles.
    Settles,
}

impl AccountState {
    /// What posting `amount_minor` on `side` would leave, or `None` if a total would
    /// leave the 64-bit range.
    pub fn effect_of(&self, side: Side, amount_minor: i64, unsettled: Unsettled) -> Option<EntryEffect> {
        let delta = signed_delta(self.account_type, side, amount_minor);
        let balance_after_minor = self.balance_minor.checked_add(delta)?;
        let (debits_after_minor, credits_after_minor) = match side {
            Side::Debit => (self.debits_minor.checked_add(amount_minor)?, self.credits_minor),
            Side::Credit => (self.debits_minor, self.credits_minor.checked_add(amount_minor)?),
        };
        let (mut unsettled_debits, mut unsettled_credits) = (self.unsettled_debits_minor, self.unsettled_credits_minor);
        match (unsettled, side) {
            (Unsettled::Unchanged, _) => {}
            (Unsettled::Opens, Side::Debit) => unsettled_debits = unsettled_debits.checked_add(amount_minor)?,
            (Unsettled::Opens, Side::Credit) => unsettled_credits = unsettled_credits.checked_add(amount_minor)?,
            // the compensating credit settles the held debit, and the other way round
            (Unsettled::Settles, Side::Credit) => unsettled_debits = settle(unsettled_debits, amount_minor)?,
            (Unsettled::Settles, Side::Debit) => unsettled_credits = settle(unsettled_credits, amount_minor)?,
        }
        Some(EntryEffect {
            balance_after_minor,
            debits_after_minor,
            credits_after_minor,
            unsettled_debits_after_minor: unsettled_debits,
            unsettled_credits_after_minor: unsettled_credits,
        })
    }

    /// The part of the balance that unsettled saga legs brought in: counted in the
    /// balance, not yet spendable.
    pub fn held_minor(&self) -> i64 {
        held_of(self.account_type, self.unsettled_debits_minor, self.unsettled_credits_minor)
    }

    /// Whether the account may go to `effect` as far as funds go: a non-negative account
    /// never goes below zero, nor spends what unsettled legs brought in.
    pub fn funds_allow(&self, effect: &EntryEffect) -> bool {
        self.allow_negative
            || effect.balance_after_minor
                >= held_of(self.account_type, effect.unsettled_debits_after_minor, effect.unsettled_credits_after_minor)
    }

    /// Whether a saga leg on this account has not settled yet.
    pub fn is_settling(&self) -> bool {
        self.unsettled_debits_minor > 0 || self.unsettled_credits_minor > 0
    }

    /// Settles the entries of a held leg whose saga posted: no entry, the amounts just
    /// stop being unsettled. `None` if they were not unsettled (a bug upstream).
    pub fn release(&mut self, side: Side, amount_minor: i64) -> Option<()> {
        match side {
            Side::Debit => self.unsettled_debits_minor = settle(self.unsettled_debits_minor, amount_minor)?,
            Side::Credit => self.unsettled_credits_minor = settle(self.unsettled_credits_minor, amount_minor)?,
        }
        Some(())
    }

    /// Whether an entry on `side` lowers the balance (what FROZEN blocks).
    pub fn is_outgoing(&self, side: Side) -> bool {
        side != self.account_type.normal_side()
    }

    pub fn apply(&mut self, effect: EntryEffect, entry_id: Uuid) {
        self.balance_minor = effect.balance_after_minor;
        self.debits_minor = effect.debits_after_minor;
        self.credits_minor = effect.credits_after_minor;
        self.unsettled_debits_minor = effect.unsettled_debits_after_minor;
        self.unsettled_credits_minor = effect.unsettled_credits_after_minor;
        self.version += 1;
        self.last_entry_id = Some(entry_id);
        debug_assert_eq!(
            crate::money::balance_from_totals(self.account_type, self.debits_minor as i128, self.credits_minor as i128),
            self.balance_minor as i128,
            "balance must equal the signed difference of its totals"
        );
    }
}

/// Unsettled amounts on the side that raises the balance: money brought in.
fn held_of(account_type: crate::money::AccountType, unsettled_debits: i64, unsettled_credits: i64) -> i64 {
    match account_type.normal_side() {
        Side::Debit => unsettled_debits,
        Side::Credit => unsettled_credits,
    }
}

fn settle(unsettled: i64, amount_minor: i64) -> Option<i64> {
    unsettled.checked_sub(amount_minor).filter(|left| *left >= 0)
}
