//! Sides, account types and the balance arithmetic. Amounts are `i64` minor units; every
//! sum is checked, because a wrapped balance is a silent loss of money.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Debit => "DEBIT",
            Side::Credit => "CREDIT",
        }
    }

    pub fn parse(text: &str) -> Option<Side> {
        match text {
            "DEBIT" => Some(Side::Debit),
            "CREDIT" => Some(Side::Credit),
            _ => None,
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Debit => Side::Credit,
            Side::Credit => Side::Debit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccountType {
    Asset,
    Expense,
    Liability,
    Equity,
    Revenue,
}

impl AccountType {
    pub const ALL: [AccountType; 5] =
        [AccountType::Asset, AccountType::Expense, AccountType::Liability, AccountType::Equity, AccountType::Revenue];

    /// The side on which entries increase this account's balance.
    pub fn normal_side(self) -> Side {
        match self {
            AccountType::Asset | AccountType::Expense => Side::Debit,
            AccountType::Liability | AccountType::Equity | AccountType::Revenue => Side::Credit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Asset => "ASSET",
            AccountType::Expense => "EXPENSE",
            AccountType::Liability => "LIABILITY",
            AccountType::Equity => "EQUITY",
            AccountType::Revenue => "REVENUE",
        }
    }

    pub fn parse(text: &str) -> Option<AccountType> {
        AccountType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// The change an entry makes to the balance of an account of type `account_type`.
pub fn signed_delta(account_type: AccountType, side: Side, amount_minor: i64) -> i64 {
    debug_assert!(amount_minor > 0);
    if side == account_type.normal_side() { amount_minor } else { -amount_minor }
}

/// Balance from debit and credit totals, in i128 so that it cannot overflow.
pub fn balance_from_totals(account_type: AccountType, debits_minor: i128, credits_minor: i128) -> i128 {
    match account_type.normal_side() {
        Side::Debit => debits_minor - credits_minor,
        Side::Credit => credits_minor - debits_minor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_sides_follow_the_protocol_table() {
        assert_eq!(AccountType::Asset.normal_side(), Side::Debit);
        assert_eq!(AccountType::Expense.normal_side(), Side::Debit);
        assert_eq!(AccountType::Liability.normal_side(), Side::Credit);
        assert_eq!(AccountType::Equity.normal_side(), Side::Credit);
        assert_eq!(AccountType::Revenue.normal_side(), Side::Credit);
    }

    #[test]
    fn debit_lowers_a_liability_and_raises_an_asset() {
        assert_eq!(signed_delta(AccountType::Liability, Side::Debit, 5), -5);
        assert_eq!(signed_delta(AccountType::Asset, Side::Debit, 5), 5);
        assert_eq!(balance_from_totals(AccountType::Liability, 3, 10), 7);
        assert_eq!(balance_from_totals(AccountType::Asset, 3, 10), -7);
    }
}
