//! Opening accounts and changing their status.

use super::*;
use crate::account::{AccountState, AccountStatus};
use crate::command::{CreateAccountCommand, SetStatusCommand};
use crate::ids::IdSource;
use crate::rejection::Rejection;
use serde_json::json;

impl<I: IdSource> Planner<'_, I> {
    pub(super) fn create_account(&mut self, command: &CreateAccountCommand) -> Outcome {
        if let Some(existing) = self.snapshot.accounts.get(&command.account_id) {
            debug_assert_eq!(existing.tenant_id, command.tenant_id, "derived ids embed the tenant");
            return if existing.attributes_digest == command.attributes_digest() {
                Outcome::Account { account_id: command.account_id }
            } else {
                Outcome::Rejected(Rejection::AccountExists { account_id: command.account_id })
            };
        }
        let state = AccountState {
            account_id: command.account_id,
            tenant_id: command.tenant_id,
            account_type: command.account_type,
            currency: command.currency,
            status: AccountStatus::Active,
            allow_negative: command.allow_negative,
            balance_minor: 0,
            debits_minor: 0,
            credits_minor: 0,
            unsettled_debits_minor: 0,
            unsettled_credits_minor: 0,
            version: 0,
            last_entry_id: None,
            attributes_digest: command.attributes_digest(),
        };
        self.snapshot.accounts.insert(command.account_id, state);
        self.writes.accounts.push(NewAccount { command: command.clone(), created_at: self.now() });
        let payload = json!({
            "code": command.code,
            "type": command.account_type,
            "currency": command.currency,
            "allow_negative": command.allow_negative,
            "created_at": self.now(),
        });
        self.event(command.tenant_id, "account", command.account_id, "account.created", payload);
        Outcome::Account { account_id: command.account_id }
    }

    pub(super) fn set_status(&mut self, command: &SetStatusCommand) -> Outcome {
        let Some(account) = self.tenant_account(command.tenant_id, command.account_id) else {
            return Outcome::Rejected(Rejection::AccountNotFound { account_id: Some(command.account_id) });
        };
        let from = account.status;
        if from == command.status {
            return Outcome::Account { account_id: command.account_id };
        }
        if from == AccountStatus::Closed {
            return Outcome::Rejected(Rejection::AccountClosed { account_id: command.account_id });
        }
        if self.is_clearing(account) {
            return Outcome::Rejected(Rejection::clearing_account(command.account_id));
        }
        if command.status == AccountStatus::Closed && account.balance_minor != 0 {
            return Outcome::Rejected(Rejection::AccountBalanceNonzero {
                account_id: command.account_id,
                balance_minor: account.balance_minor,
            });
        }
        if command.status == AccountStatus::Closed && account.is_settling() {
            return Outcome::Rejected(Rejection::AccountSettling { account_id: command.account_id });
        }
        let now = self.now();
        self.snapshot.accounts.get_mut(&command.account_id).expect("checked above").status = command.status;
        self.writes.touched_accounts.insert(command.account_id);
        self.writes.status_changes.push(StatusChange {
            tenant_id: command.tenant_id,
            account_id: command.account_id,
            from,
            to: command.status,
            actor: command.actor.clone(),
            reason_code: command.reason_code.clone(),
            changed_at: now,
        });
        let payload = json!({
            "from": from,
            "to": command.status,
            "actor": command.actor,
            "reason_code": command.reason_code,
            "changed_at": now,
        });
        self.event(command.tenant_id, "account", command.account_id, "account.status_changed", payload);
        Outcome::Account { account_id: command.account_id }
    }
}
