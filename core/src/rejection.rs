//! Business outcomes that refuse a command. They are values, not errors: a shard returns
//! one per refused command and carries on with the rest of its batch.
//!
//! Precedence, for a post: request shape (`Invalid`, `UnknownCurrency`, `Unbalanced`,
//! `DuplicateAccount`, decided without state), then the idempotency key
//! (`IdempotencyConflict` or a replay), then `AccountNotFound`, `CurrencyMismatch`,
//! `DuplicateExternalRef`, `AccountClosed`, `AccountFrozen`, `InsufficientFunds`.

use crate::error_code::ErrorCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Invalid {
        field: String,
        message: String,
    },
    UnknownCurrency {
        field: String,
        currency: String,
    },
    Unbalanced {
        currency: String,
        debits_minor: i128,
        credits_minor: i128,
    },
    CurrencyMismatch {
        account_id: Uuid,
        account_currency: String,
        entry_currency: String,
    },
    DuplicateAccount {
        account_id: Uuid,
    },
    Forbidden {
        message: String,
    },
    AccountNotFound {
        account_id: Option<Uuid>,
    },
    TransactionNotFound,
    AccountExists {
        account_id: Uuid,
    },
    IdempotencyConflict,
    DuplicateExternalRef {
        ledger_tx_id: Uuid,
    },
    AlreadyReversed {
        reversal_tx_id: Uuid,
    },
    InProgress,
    /// The request with this key was interrupted before it was decided and its claims were
    /// settled by the recovery loop: it never posted, and its key stays refused.
    RequestAbandoned,
    TooLarge {
        limit_bytes: usize,
    },
    /// `held_minor`: the part of the balance that unsettled saga legs brought in.
    InsufficientFunds {
        account_id: Uuid,
        balance_minor: i64,
        held_minor: i64,
        required_minor: i64,
    },
    AccountFrozen {
        account_id: Uuid,
    },
    AccountClosed {
        account_id: Uuid,
    },
    AccountBalanceNonzero {
        account_id: Uuid,
        balance_minor: i64,
    },
    /// Closing an account that a cross-shard transaction still in flight touched.
    AccountSettling {
        account_id: Uuid,
    },
}

impl Rejection {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection::Invalid { field: field.into(), message: message.into() }
    }

    /// A client asked to post to or change a clearing account, which is the ledger's own.
    pub fn clearing_account(account_id: Uuid) -> Rejection {
        Rejection::Forbidden {
            message: format!(
                "account {account_id} is a clearing account, kept by the ledger itself for cross-shard transactions"
            ),
        }
    }

    pub fn error_code(&self) -> ErrorCode {
        match self {
            Rejection::Invalid { .. } => ErrorCode::InvalidRequest,
            Rejection::UnknownCurrency { .. } => ErrorCode::UnknownCurrency,
            Rejection::Unbalanced { .. } => ErrorCode::Unbalanced,
            Rejection::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            Rejection::DuplicateAccount { .. } => ErrorCode::DuplicateAccount,
            Rejection::Forbidden { .. } => ErrorCode::Forbidden,
            Rejection::AccountNotFound { .. } => ErrorCode::AccountNotFound,
            Rejection::TransactionNotFound => ErrorCode::TransactionNotFound,
            Rejection::AccountExists { .. } => ErrorCode::AccountExists,
            Rejection::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            Rejection::DuplicateExternalRef { .. } => ErrorCode::DuplicateExternalRef,
            Rejection::AlreadyReversed { .. } => ErrorCode::AlreadyReversed,
            Rejection::InProgress | Rejection::AccountSettling { .. } => ErrorCode::InProgress,
            Rejection::RequestAbandoned => ErrorCode::RequestAbandoned,
            Rejection::TooLarge { .. } => ErrorCode::TooLarge,
            Rejection::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
            Rejection::AccountFrozen { .. } => ErrorCode::AccountFrozen,
            Rejection::AccountClosed { .. } => ErrorCode::AccountClosed,
            Rejection::AccountBalanceNonzero { .. } => ErrorCode::AccountBalanceNonzero,
        }
    }

    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    pub fn status(&self) -> u16 {
        self.error_code().status()
    }

    /// Whether the rejection is remembered under the idempotency key and replayed to a
    /// retry (docs/PROTOCOL.md, "Idempotency and external references"): business
    /// rejections with status 409 or 422, except the two that concern the key itself.
    pub fn is_stored_under_key(&self) -> bool {
        self.error_code().is_remembered_under_key()
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::Invalid { field, message } => format!("{field}: {message}"),
            Rejection::UnknownCurrency { currency, .. } => {
                format!("currency {currency} is not in the ledger's currency table")
            }
            Rejection::Unbalanced { currency, debits_minor, credits_minor } => {
                format!("{currency} debits {debits_minor} do not equal credits {credits_minor}")
            }
            Rejection::CurrencyMismatch { account_currency, entry_currency, .. } => {
                format!("entry currency {entry_currency} differs from the account currency {account_currency}")
            }
            Rejection::DuplicateAccount { .. } => "an account appears more than once in the transaction".into(),
            Rejection::Forbidden { message } => message.clone(),
            Rejection::AccountNotFound { .. } => "account not found".into(),
            Rejection::TransactionNotFound => "transaction not found".into(),
            Rejection::AccountExists { .. } => "an account with this code exists with different attributes".into(),
            Rejection::IdempotencyConflict => "the idempotency key was already used with a different request".into(),
            Rejection::DuplicateExternalRef { .. } => "the external reference is already used by another transaction".into(),
            Rejection::AlreadyReversed { .. } => "the transaction has already been reversed".into(),
            Rejection::InProgress => {
                "a request with this idempotency key or external reference is still being processed; retry later".into()
            }
            Rejection::RequestAbandoned => "the request with this idempotency key was interrupted before it was decided and \
                                             was abandoned: nothing was posted; send it again with a new key"
                .into(),
            Rejection::TooLarge { limit_bytes } => format!("request body is larger than {limit_bytes} bytes"),
            Rejection::InsufficientFunds { balance_minor, held_minor: 0, required_minor, .. } => {
                format!("balance {balance_minor} is less than the {required_minor} required")
            }
            Rejection::InsufficientFunds { balance_minor, held_minor, required_minor, .. } => format!(
                "balance {balance_minor}, of which {held_minor} is held until a cross-shard transaction settles, \
                 leaves less than the {required_minor} required"
            ),
            Rejection::AccountFrozen { .. } => "the account is frozen: outgoing movements are blocked".into(),
            Rejection::AccountClosed { .. } => "the account is closed".into(),
            Rejection::AccountBalanceNonzero { balance_minor, .. } => {
                format!("the account balance is {balance_minor}, not zero")
            }
            Rejection::AccountSettling { .. } => {
                "a cross-shard transaction on this account is still settling; retry shortly".into()
            }
        }
    }

    pub fn details(&self) -> Value {
        match self {
            Rejection::Invalid { field, .. } => json!({ "field": field }),
            Rejection::UnknownCurrency { field, currency } => json!({ "field": field, "currency": currency }),
            Rejection::Unbalanced { currency, debits_minor, credits_minor } => json!({
                "currency": currency,
                "debits_minor": debits_minor.to_string(),
                "credits_minor": credits_minor.to_string(),
            }),
            Rejection::CurrencyMismatch { account_id, account_currency, entry_currency } => json!({
                "account_id": account_id,
                "account_currency": account_currency,
                "entry_currency": entry_currency,
            }),
            Rejection::DuplicateAccount { account_id } => json!({ "account_id": account_id }),
            Rejection::AccountNotFound { account_id: Some(account_id) } => json!({ "account_id": account_id }),
            Rejection::AccountExists { account_id } => json!({ "account_id": account_id }),
            Rejection::DuplicateExternalRef { ledger_tx_id } => json!({ "ledger_tx_id": ledger_tx_id }),
            Rejection::AlreadyReversed { reversal_tx_id } => json!({ "reversal_tx_id": reversal_tx_id }),
            Rejection::TooLarge { limit_bytes } => json!({ "limit_bytes": limit_bytes }),
            Rejection::InsufficientFunds { account_id, balance_minor, held_minor, required_minor } => {
                let mut details = json!({
                    "account_id": account_id,
                    "balance_minor": balance_minor,
                    "required_minor": required_minor,
                });
                if *held_minor != 0 {
                    details["held_minor"] = json!(held_minor);
                }
                details
            }
            Rejection::AccountFrozen { account_id }
            | Rejection::AccountClosed { account_id }
            | Rejection::AccountSettling { account_id } => json!({ "account_id": account_id }),
            Rejection::AccountBalanceNonzero { account_id, balance_minor } => {
                json!({ "account_id": account_id, "balance_minor": balance_minor })
            }
            Rejection::Forbidden { .. }
            | Rejection::AccountNotFound { account_id: None }
            | Rejection::TransactionNotFound
            | Rejection::RequestAbandoned
            | Rejection::IdempotencyConflict
            | Rejection::InProgress => json!({}),
        }
    }

    /// The reply body of docs/PROTOCOL.md, "Replies and errors".
    pub fn to_body(&self) -> Value {
        json!({ "error": { "code": self.code(), "message": self.message(), "details": self.details() } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_business_409_and_422_are_stored_under_the_key() {
        let id = Uuid::nil();
        assert!(
            Rejection::InsufficientFunds { account_id: id, balance_minor: 0, held_minor: 0, required_minor: 1 }
                .is_stored_under_key()
        );
        assert!(Rejection::DuplicateExternalRef { ledger_tx_id: id }.is_stored_under_key());
        assert!(Rejection::AlreadyReversed { reversal_tx_id: id }.is_stored_under_key());
        assert!(Rejection::AccountFrozen { account_id: id }.is_stored_under_key());
        assert!(!Rejection::IdempotencyConflict.is_stored_under_key());
        assert!(!Rejection::InProgress.is_stored_under_key());
        assert!(!Rejection::invalid("x", "y").is_stored_under_key());
        assert!(!Rejection::AccountNotFound { account_id: None }.is_stored_under_key());
        assert!(!Rejection::TooLarge { limit_bytes: 1 }.is_stored_under_key());
    }
}
