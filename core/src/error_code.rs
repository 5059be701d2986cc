//! The protocol's error codes as a type, with the status each one has. Codes cross our
//! own boundaries (shard to router) as this enum, never as strings to compare.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidRequest,
    UnknownCurrency,
    Unbalanced,
    CurrencyMismatch,
    DuplicateAccount,
    Forbidden,
    AccountNotFound,
    TransactionNotFound,
    AccountExists,
    IdempotencyConflict,
    DuplicateExternalRef,
    AlreadyReversed,
    InProgress,
    RequestAbandoned,
    TooLarge,
    InsufficientFunds,
    AccountFrozen,
    AccountClosed,
    AccountBalanceNonzero,
    ShardUnavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownCurrency,
        ErrorCode::Unbalanced,
        ErrorCode::CurrencyMismatch,
        ErrorCode::DuplicateAccount,
        ErrorCode::Forbidden,
        ErrorCode::AccountNotFound,
        ErrorCode::TransactionNotFound,
        ErrorCode::AccountExists,
        ErrorCode::IdempotencyConflict,
        ErrorCode::DuplicateExternalRef,
        ErrorCode::AlreadyReversed,
        ErrorCode::InProgress,
        ErrorCode::RequestAbandoned,
        ErrorCode::TooLarge,
        ErrorCode::InsufficientFunds,
        ErrorCode::AccountFrozen,
        ErrorCode::AccountClosed,
        ErrorCode::AccountBalanceNonzero,
        ErrorCode::ShardUnavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::UnknownCurrency => "UNKNOWN_CURRENCY",
            ErrorCode::Unbalanced => "UNBALANCED",
            ErrorCode::CurrencyMismatch => "CURRENCY_MISMATCH",
            ErrorCode::DuplicateAccount => "DUPLICATE_ACCOUNT",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::AccountNotFound => "ACCOUNT_NOT_FOUND",
            ErrorCode::TransactionNotFound => "TRANSACTION_NOT_FOUND",
            ErrorCode::AccountExists => "ACCOUNT_EXISTS",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::DuplicateExternalRef => "DUPLICATE_EXTERNAL_REF",
            ErrorCode::AlreadyReversed => "ALREADY_REVERSED",
            ErrorCode::InProgress => "IN_PROGRESS",
            ErrorCode::RequestAbandoned => "REQUEST_ABANDONED",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::InsufficientFunds => "INSUFFICIENT_FUNDS",
            ErrorCode::AccountFrozen => "ACCOUNT_FROZEN",
            ErrorCode::AccountClosed => "ACCOUNT_CLOSED",
            ErrorCode::AccountBalanceNonzero => "ACCOUNT_BALANCE_NONZERO",
            ErrorCode::ShardUnavailable => "SHARD_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
    }

    /// The status of the protocol's error table (the `Nats-Service-Error-Code` header).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::UnknownCurrency
            | ErrorCode::Unbalanced
            | ErrorCode::CurrencyMismatch
            | ErrorCode::DuplicateAccount => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::AccountNotFound | ErrorCode::TransactionNotFound => 404,
            ErrorCode::AccountExists
            | ErrorCode::IdempotencyConflict
            | ErrorCode::DuplicateExternalRef
            | ErrorCode::AlreadyReversed
            | ErrorCode::InProgress
            | ErrorCode::RequestAbandoned => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::InsufficientFunds
            | ErrorCode::AccountFrozen
            | ErrorCode::AccountClosed
            | ErrorCode::AccountBalanceNonzero => 422,
            ErrorCode::Internal => 500,
            ErrorCode::ShardUnavailable => 503,
        }
    }

    /// Whether a refusal with this code is remembered under its idempotency key and
    /// replayed to a retry: the business refusals (409, 422) except the two that concern
    /// the key itself.
    pub fn is_remembered_under_key(self) -> bool {
        matches!(self.status(), 409 | 422) && !matches!(self, ErrorCode::IdempotencyConflict | ErrorCode::InProgress)
    }

    /// Whether the request's outcome is unknown (the shard could not be reached or failed):
    /// nothing is settled, a retry with the same key finds out.
    pub fn outcome_unknown(self) -> bool {
        matches!(self, ErrorCode::ShardUnavailable | ErrorCode::Internal)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_in_text_and_json() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn only_business_409_and_422_are_remembered_under_the_key() {
        let remembered: Vec<_> = ErrorCode::ALL.into_iter().filter(|c| c.is_remembered_under_key()).collect();
        assert_eq!(
            remembered,
            [
                ErrorCode::AccountExists,
                ErrorCode::DuplicateExternalRef,
                ErrorCode::AlreadyReversed,
                ErrorCode::RequestAbandoned,
                ErrorCode::InsufficientFunds,
                ErrorCode::AccountFrozen,
                ErrorCode::AccountClosed,
                ErrorCode::AccountBalanceNonzero,
            ]
        );
    }
}
