//! Posting a transaction: entry checks, effects, the rows and event it writes.

use super::*;
use crate::account::{AccountState, AccountStatus, EntryEffect, Unsettled};
use crate::command::{EntryCommand, PostCommand};
use crate::ids::IdSource;
use crate::outbox_form;
use crate::rejection::Rejection;
use crate::saga::clearing_account_id;
use serde_json::{Value, json};
use uuid::Uuid;

impl<I: IdSource> Planner<'_, I> {
    /// Whether `account` is one of this shard's clearing accounts: the ledger's own, which
    /// no client may post to or change.
    pub(super) fn is_clearing(&self, account: &AccountState) -> bool {
        account.allow_negative
            && account.account_id == clearing_account_id(account.tenant_id, self.input.shard_id, account.currency)
    }

    /// Checks status, funds and totals of every entry; the effects if all pass.
    pub(super) fn effects(
        &self,
        tenant_id: Uuid,
        entries: &[EntryCommand],
        frozen_blocks: bool,
        unsettled: Unsettled,
    ) -> Result<Vec<EntryEffect>, Rejection> {
        let mut effects = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let account = self
                .tenant_account(tenant_id, entry.account_id)
                .ok_or(Rejection::AccountNotFound { account_id: Some(entry.account_id) })?;
            if account.status == AccountStatus::Closed {
                return Err(Rejection::AccountClosed { account_id: entry.account_id });
            }
            if frozen_blocks && account.status == AccountStatus::Frozen && account.is_outgoing(entry.side) {
                return Err(Rejection::AccountFrozen { account_id: entry.account_id });
            }
            let effect = account.effect_of(entry.side, entry.amount_minor, unsettled).ok_or_else(|| {
                Rejection::invalid(format!("entries[{index}].amount_minor"), "the account's totals would pass 2^63-1")
            })?;
            if !account.funds_allow(&effect) {
                return Err(Rejection::InsufficientFunds {
                    account_id: entry.account_id,
                    balance_minor: account.balance_minor,
                    held_minor: account.held_minor(),
                    required_minor: entry.amount_minor,
                });
            }
            effects.push(effect);
        }
        Ok(effects)
    }

    pub(super) fn post(&mut self, command: &PostCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        for entry in &command.entries {
            let Some(account) = self.tenant_account(tenant_id, entry.account_id) else {
                return Outcome::Rejected(Rejection::AccountNotFound { account_id: Some(entry.account_id) });
            };
            if account.currency != entry.currency {
                return Outcome::Rejected(Rejection::CurrencyMismatch {
                    account_id: entry.account_id,
                    account_currency: account.currency.to_string(),
                    entry_currency: entry.currency.to_string(),
                });
            }
            if self.is_clearing(account) {
                return Outcome::Rejected(Rejection::clearing_account(entry.account_id));
            }
        }
        if let Some(holder) = command.external_ref_held_by {
            return self.refuse(tenant_id, key, fingerprint, Rejection::DuplicateExternalRef { ledger_tx_id: holder });
        }
        if let Some(external_ref) = &command.external_ref {
            match self.ref_holder(tenant_id, external_ref, key) {
                Some(Some(holder)) => {
                    return self.refuse(tenant_id, key, fingerprint, Rejection::DuplicateExternalRef { ledger_tx_id: holder });
                }
                // another request is posting with this reference right now
                Some(None) => return Outcome::Rejected(Rejection::InProgress),
                None => {}
            }
        }
        let effects = match self.effects(tenant_id, &command.entries, true, Unsettled::Unchanged) {
            Ok(effects) => effects,
            Err(rejection) => return self.refuse(tenant_id, key, fingerprint, rejection),
        };
        self.accept(Accepted {
            tenant_id,
            idempotency_key: key,
            fingerprint,
            tx_type: &command.tx_type,
            entries: &command.entries,
            entry_seqs: &[],
            ledger_tx_id: None,
            effects,
            external_ref: command.external_ref.as_ref(),
            business_ref: command.business_ref.as_ref(),
            occurred_at: command.occurred_at,
            actor: &command.actor,
            reason_code: command.reason_code.as_ref(),
            metadata: command.metadata.clone(),
            reverses_ledger_tx_id: None,
            held_step: None,
        })
    }

    pub(super) fn accept(&mut self, tx: Accepted<'_>) -> Outcome {
        // whatever path led here, nothing that does not balance is written
        if let Err(rejection) = crate::validate::balanced(tx.entries) {
            return Outcome::Rejected(rejection);
        }
        let now = self.now();
        let ledger_tx_id = tx.ledger_tx_id.unwrap_or_else(|| self.ids.ledger_id(now, self.input.shard_id));
        let commit_seq = self.next_commit_seq;
        self.next_commit_seq += 1;
        let occurred_at = tx.occurred_at.unwrap_or(now);
        let mut posted_entries = Vec::with_capacity(tx.entries.len());
        for (index, (entry, effect)) in tx.entries.iter().zip(&tx.effects).enumerate() {
            let ledger_entry_id = self.ids.ledger_id(now, self.input.shard_id);
            let entry_seq = tx.entry_seqs.get(index).copied().unwrap_or(index as i32 + 1);
            self.snapshot.accounts.get_mut(&entry.account_id).expect("checked by effects").apply(*effect, ledger_entry_id);
            self.writes.touched_accounts.insert(entry.account_id);
            self.writes.entries.push(EntryRow {
                ledger_entry_id,
                ledger_tx_id,
                tenant_id: tx.tenant_id,
                account_id: entry.account_id,
                side: entry.side,
                amount_minor: entry.amount_minor,
                currency: entry.currency,
                entry_seq,
                balance_after_minor: effect.balance_after_minor,
                commit_seq,
                effective_at: occurred_at,
                posted_at: now,
            });
            posted_entries.push(PostedEntry {
                ledger_entry_id,
                account_id: entry.account_id,
                side: entry.side,
                amount_minor: entry.amount_minor,
                currency: entry.currency,
                entry_seq,
                balance_after_minor: effect.balance_after_minor,
            });
        }
        self.writes.transactions.push(TxRow {
            ledger_tx_id,
            tenant_id: tx.tenant_id,
            commit_seq,
            tx_type: tx.tx_type.to_owned(),
            idempotency_key: tx.idempotency_key.to_owned(),
            fingerprint: tx.fingerprint.to_owned(),
            external_ref: tx.external_ref.cloned(),
            business_ref: tx.business_ref.cloned(),
            occurred_at,
            posted_at: now,
            actor: tx.actor.to_owned(),
            reason_code: tx.reason_code.cloned(),
            metadata: tx.metadata,
            reverses_ledger_tx_id: tx.reverses_ledger_tx_id,
        });
        self.record_key(tx.tenant_id, tx.idempotency_key, tx.fingerprint, KeyOutcome::Posted { ledger_tx_id });
        if let Some(external_ref) = tx.external_ref {
            self.writes.external_refs.push(ExternalRefRow {
                tenant_id: tx.tenant_id,
                external_ref: external_ref.clone(),
                ledger_tx_id,
            });
            self.snapshot.external_refs.insert((tx.tenant_id, external_ref.clone()), ledger_tx_id);
        }
        self.snapshot.originals.insert(
            ledger_tx_id,
            OriginalTx {
                ledger_tx_id,
                tenant_id: tx.tenant_id,
                tx_type: tx.tx_type.to_owned(),
                business_ref: tx.business_ref.cloned(),
                entries: tx.entries.to_vec(),
                seqs: (0..tx.entries.len()).map(|i| tx.entry_seqs.get(i).copied().unwrap_or(i as i32 + 1)).collect(),
                reversed_by: None,
                held: tx.held_step.is_some(),
            },
        );
        if let Some(step) = tx.held_step {
            self.writes.holds_opened.push(HoldRow {
                tenant_id: tx.tenant_id,
                saga_id: ledger_tx_id,
                step: step as i32,
                created_at: now,
            });
        }
        let event_entries: Vec<Value> =
            tx.entries.iter().map(|e| outbox_form::stored_entry(e.account_id, e.side, e.amount_minor, e.currency)).collect();
        let event_type = if tx.reverses_ledger_tx_id.is_some() { "transaction.reversed" } else { "transaction.posted" };
        let payload = json!({
            "type": tx.tx_type,
            "commit_seq": commit_seq,
            "occurred_at": occurred_at,
            "posted_at": now,
            "reverses_ledger_tx_id": tx.reverses_ledger_tx_id,
            "external_ref": tx.external_ref,
            "business_ref": tx.business_ref,
            "entries": event_entries,
        });
        self.event(tx.tenant_id, "transaction", ledger_tx_id, event_type, payload);
        Outcome::Posted(PostedTx { ledger_tx_id, posted_at: now, entries: posted_entries })
    }

    pub(super) fn event(
        &mut self,
        tenant_id: Uuid,
        aggregate_type: &'static str,
        aggregate_id: Uuid,
        event_type: &'static str,
        mut payload: Value,
    ) {
        let event_id = self.ids.ledger_id(self.now(), self.input.shard_id);
        outbox_form::drop_null_keys(event_type, &mut payload);
        self.writes.outbox.push(OutboxRow {
            event_id,
            tenant_id,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            created_at: self.now(),
        });
    }
}

#[cfg(test)]
mod tests;
