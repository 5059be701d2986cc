//! A saga's records and legs on one shard: opening, progress, forward steps (held or
//! not), undo, release, and the clearing accounts they post through.

use super::*;
use crate::account::Unsettled;
use crate::command::{BeginSagaCommand, CreateAccountCommand, EntryCommand, SagaProgressCommand, SagaStepCommand};
use crate::currency::Currency;
use crate::ids::IdSource;
use crate::rejection::Rejection;
use crate::saga::{
    CLEARING_ACCOUNT_TYPE, LegEntry, SagaRecord, SagaState, StepAction, StepPhase, TX_TYPE_SAGA_COMPENSATION,
    clearing_account_code, clearing_entries,
};
use serde_json::json;
use uuid::Uuid;

impl<I: IdSource> Planner<'_, I> {
    /// Opens a saga: the key is claimed for it and its log written, in this batch.
    pub(super) fn begin_saga(&mut self, command: &BeginSagaCommand) -> Outcome {
        let draft = &command.record;
        let (tenant_id, key, fingerprint) = (draft.tenant_id, &draft.idempotency_key, &draft.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        if let Some(KeyRecord { outcome: KeyOutcome::Processing { .. }, .. }) = self.snapshot.keys.get(&(tenant_id, key.clone()))
        {
            // claimed for a single-shard request with this very body: cannot be a saga too
            return Outcome::Rejected(Rejection::InProgress);
        }
        let now = self.now();
        let saga_id = self.ids.saga_id(now, self.input.shard_id);
        let fresh =
            SagaRecord::draft(tenant_id, key, fingerprint, draft.kind.clone(), draft.header.clone(), draft.steps.clone(), now);
        let record = SagaRecord { saga_id, ..fresh };
        self.record_key(tenant_id, key, fingerprint, KeyOutcome::SagaRunning { saga_id });
        self.snapshot.sagas.insert(saga_id, record.clone());
        self.writes.sagas.push(record.clone());
        if command.runs_first_step_on(self.input.shard_id) {
            let first = self.saga_step(&command.first_step(saga_id));
            return Outcome::SagaBegunWithFirstStep(Box::new(record), Box::new(first));
        }
        Outcome::SagaBegun(Box::new(record))
    }

    /// Stores a coordinator's progress if it moves the saga forward; a terminal saga also
    /// completes its key: a posted saga replays, a refusal is stored or frees the key as
    /// the same refusal of a single-shard request would.
    pub(super) fn saga_progress(&mut self, command: &SagaProgressCommand) -> Outcome {
        let newer = &command.record;
        let Some(stored) = self.snapshot.sagas.get(&newer.saga_id).filter(|s| s.tenant_id == newer.tenant_id) else {
            return Outcome::Rejected(Rejection::TransactionNotFound);
        };
        if !stored.accepts_progress(newer) {
            return Outcome::Saga(Box::new(stored.clone()));
        }
        let record = SagaRecord { reversed_by: stored.reversed_by, updated_at: self.now(), ..newer.clone() };
        if let Some(release) = command.home_release()
            && let refused @ Outcome::Rejected(_) = self.release_step(&release)
        {
            return refused;
        }
        let (tenant_id, key, fingerprint) = (record.tenant_id, record.idempotency_key.clone(), record.fingerprint.clone());
        let owns_key = matches!(
            self.snapshot.keys.get(&(tenant_id, key.clone())),
            Some(KeyRecord { outcome: KeyOutcome::SagaRunning { saga_id }, fingerprint: f })
                if *saga_id == record.saga_id && *f == fingerprint
        );
        if owns_key && record.state.is_terminal() {
            let outcome = match (&record.state, &record.failure, &record.reply) {
                (SagaState::Posted, _, _) => KeyOutcome::Posted { ledger_tx_id: record.saga_id },
                (_, Some(failure), Some(reply)) if rejection_is_stored(failure.status, reply) => {
                    KeyOutcome::Rejected { status: failure.status, body: reply.clone() }
                }
                _ => KeyOutcome::Retryable,
            };
            self.record_key(tenant_id, &key, &fingerprint, outcome);
        }
        let updated_at = record.updated_at;
        self.snapshot.sagas.insert(record.saga_id, record.clone());
        self.writes.sagas.push(record);
        Outcome::SagaSaved { updated_at }
    }

    pub(super) fn saga_step(&mut self, command: &SagaStepCommand) -> Outcome {
        const FINGERPRINT: &str = "saga-step";
        match command.phase {
            StepPhase::Forward => {}
            StepPhase::Undo => return self.undo_step(command, FINGERPRINT),
            StepPhase::Release => return self.release_step(command),
        }
        let tenant_id = command.tenant_id;
        let key = command.forward_key();
        if let Some(answer) = self.step_answered(command, &key) {
            return answer;
        }
        let (unsettled, held_step) =
            if command.hold { (Unsettled::Opens, Some(command.step)) } else { (Unsettled::Unchanged, None) };
        // Every refusal of a step is stored under its key, whatever its status: a step
        // re-sent by a resuming coordinator must get the same answer, or a saga that
        // turned back could see a leg post after all.
        let refused = |planner: &mut Self, rejection: Rejection| {
            let outcome = KeyOutcome::Rejected { status: rejection.status(), body: rejection.to_body() };
            planner.record_key(tenant_id, &key, FINGERPRINT, outcome);
            Outcome::Rejected(rejection)
        };
        match &command.action {
            StepAction::Post { entries } => {
                let mut leg: Vec<LegEntry> = entries.clone();
                for e in entries {
                    let Some(account) = self.tenant_account(tenant_id, e.entry.account_id) else {
                        return refused(self, Rejection::AccountNotFound { account_id: Some(e.entry.account_id) });
                    };
                    if account.currency != e.entry.currency {
                        let mismatch = Rejection::CurrencyMismatch {
                            account_id: e.entry.account_id,
                            account_currency: account.currency.to_string(),
                            entry_currency: e.entry.currency.to_string(),
                        };
                        return refused(self, mismatch);
                    }
                    if self.is_clearing(account) {
                        return refused(self, Rejection::clearing_account(e.entry.account_id));
                    }
                }
                let client_entries: Vec<EntryCommand> = entries.iter().map(|e| e.entry.clone()).collect();
                let mut effects = match self.effects(tenant_id, &client_entries, true, unsettled) {
                    Ok(effects) => effects,
                    Err(rejection) => return refused(self, rejection),
                };
                let clearing = clearing_entries(tenant_id, self.input.shard_id, entries, command.header.entry_count);
                let whole_leg: Vec<EntryCommand> =
                    client_entries.iter().chain(clearing.iter().map(|e| &e.entry)).cloned().collect();
                if let Err(rejection) = crate::validate::balanced(&whole_leg) {
                    return refused(self, rejection);
                }
                // only a leg that posts creates its clearing account
                for c in &clearing {
                    self.ensure_clearing_account(tenant_id, c.entry.currency);
                }
                let clearing_commands: Vec<EntryCommand> = clearing.iter().map(|e| e.entry.clone()).collect();
                match self.effects(tenant_id, &clearing_commands, true, unsettled) {
                    Ok(more) => effects.extend(more),
                    // a clearing account's totals would pass 2^63-1: refuse, like any account
                    Err(rejection) => return refused(self, rejection),
                }
                leg.extend(clearing);
                let (seqs, entries): (Vec<i32>, Vec<EntryCommand>) = leg.into_iter().map(|e| (e.seq, e.entry)).unzip();
                let header = &command.header;
                self.accept(Accepted {
                    tenant_id,
                    idempotency_key: &key,
                    fingerprint: FINGERPRINT,
                    tx_type: &header.tx_type,
                    entries: &entries,
                    entry_seqs: &seqs,
                    ledger_tx_id: Some(command.saga_id),
                    effects,
                    external_ref: None,
                    business_ref: header.business_ref.as_ref(),
                    occurred_at: header.occurred_at,
                    actor: &header.actor,
                    reason_code: header.reason_code.as_ref(),
                    metadata: header.metadata.clone(),
                    reverses_ledger_tx_id: None,
                    held_step,
                })
            }
            StepAction::Mirror { of } => {
                let Some(original) = self.snapshot.originals.get(of).filter(|o| o.tenant_id == tenant_id).cloned() else {
                    return refused(self, Rejection::TransactionNotFound);
                };
                let mirrored: Vec<EntryCommand> =
                    original.entries.iter().map(|e| EntryCommand { side: e.side.opposite(), ..e.clone() }).collect();
                let effects = match self.effects(tenant_id, &mirrored, false, unsettled) {
                    Ok(effects) => effects,
                    Err(rejection) => return refused(self, rejection),
                };
                let header = &command.header;
                self.accept(Accepted {
                    tenant_id,
                    idempotency_key: &key,
                    fingerprint: FINGERPRINT,
                    tx_type: TX_TYPE_REVERSAL,
                    entries: &mirrored,
                    entry_seqs: &original.seqs,
                    ledger_tx_id: Some(command.saga_id),
                    effects,
                    external_ref: None,
                    business_ref: original.business_ref.as_ref(),
                    occurred_at: None,
                    actor: &header.actor,
                    reason_code: header.reason_code.as_ref(),
                    metadata: json!({}),
                    reverses_ledger_tx_id: Some(*of),
                    held_step,
                })
            }
            StepAction::ClaimReversal { of } => {
                let Some(original) = self.snapshot.sagas.get(of).filter(|s| s.tenant_id == tenant_id) else {
                    return refused(self, Rejection::TransactionNotFound);
                };
                if original.state != SagaState::Posted {
                    return refused(self, Rejection::TransactionNotFound);
                }
                match original.reversed_by {
                    Some(other) if other != command.saga_id => {
                        return refused(self, Rejection::AlreadyReversed { reversal_tx_id: other });
                    }
                    _ => {}
                }
                let claimed = SagaRecord { reversed_by: Some(command.saga_id), updated_at: self.now(), ..original.clone() };
                self.snapshot.sagas.insert(*of, claimed.clone());
                self.writes.sagas.push(claimed);
                self.record_key(tenant_id, &key, FINGERPRINT, KeyOutcome::Posted { ledger_tx_id: *of });
                Outcome::Completed
            }
        }
    }

    /// A step or undo that was executed (or refused) before answers as it did then.
    pub(super) fn step_answered(&self, command: &SagaStepCommand, key: &str) -> Option<Outcome> {
        match self.snapshot.keys.get(&(command.tenant_id, key.to_owned())).map(|r| &r.outcome) {
            Some(KeyOutcome::Posted { .. }) if matches!(command.action, StepAction::ClaimReversal { .. }) => {
                Some(Outcome::Completed)
            }
            Some(KeyOutcome::Posted { ledger_tx_id }) => Some(Outcome::Replay { ledger_tx_id: *ledger_tx_id }),
            Some(KeyOutcome::Rejected { status, body }) => Some(Outcome::ReplayRejection { status: *status, body: body.clone() }),
            _ => None,
        }
    }

    /// Undoes a step. If the step never executed here, it is marked refused first, so that
    /// a late copy of it can never execute after the saga turned back.
    pub(super) fn undo_step(&mut self, command: &SagaStepCommand, fingerprint: &str) -> Outcome {
        let tenant_id = command.tenant_id;
        let key = crate::saga::undo_key(command.saga_id, command.step);
        if let Some(answer) = self.step_answered(command, &key) {
            return answer;
        }
        let forward_key = crate::saga::step_key(command.saga_id, command.step);
        match self.snapshot.keys.get(&(tenant_id, forward_key.clone())).map(|r| r.outcome.clone()) {
            Some(KeyOutcome::Posted { .. }) => {}
            Some(KeyOutcome::Rejected { .. }) => return Outcome::Completed,
            _ => {
                // internal only: a coordinator sees it, never a client
                let body = json!({"error": {"code": "SAGA_ABORTED", "message": "the saga turned back before this step ran",
                                            "details": {"saga_id": command.saga_id}}});
                let outcome = KeyOutcome::Rejected { status: 409, body };
                self.record_key(tenant_id, &forward_key, fingerprint, outcome);
                return Outcome::Completed;
            }
        }
        match &command.action {
            StepAction::ClaimReversal { of } => {
                if let Some(original) = self.snapshot.sagas.get(of).cloned()
                    && original.reversed_by == Some(command.saga_id)
                {
                    let released = SagaRecord { reversed_by: None, updated_at: self.now(), ..original };
                    self.snapshot.sagas.insert(*of, released.clone());
                    self.writes.sagas.push(released);
                }
                self.record_key(tenant_id, &key, fingerprint, KeyOutcome::Posted { ledger_tx_id: *of });
                Outcome::Completed
            }
            StepAction::Post { .. } | StepAction::Mirror { .. } => {
                let Some(leg) = self.snapshot.originals.get(&command.saga_id).filter(|o| o.tenant_id == tenant_id).cloned()
                else {
                    return Outcome::Rejected(Rejection::TransactionNotFound);
                };
                let mirrored: Vec<EntryCommand> =
                    leg.entries.iter().map(|e| EntryCommand { side: e.side.opposite(), ..e.clone() }).collect();
                // A held leg's compensation cannot be refused: what the leg brought in was
                // never spendable and its accounts could not be closed. An unheld leg (a
                // last leg is never undone; older logs) obeys the ordinary rules: a refusal
                // is not stored, the coordinator retries until it posts, and it never
                // drives a non-negative account below zero.
                let unsettled = if leg.held { Unsettled::Settles } else { Unsettled::Unchanged };
                let effects = match self.effects(tenant_id, &mirrored, false, unsettled) {
                    Ok(effects) => effects,
                    Err(rejection) => return Outcome::Rejected(rejection),
                };
                if leg.held {
                    self.settle_hold(command.saga_id);
                }
                self.accept(Accepted {
                    tenant_id,
                    idempotency_key: &key,
                    fingerprint,
                    tx_type: TX_TYPE_SAGA_COMPENSATION,
                    entries: &mirrored,
                    entry_seqs: &leg.seqs,
                    ledger_tx_id: None,
                    effects,
                    external_ref: None,
                    business_ref: leg.business_ref.as_ref(),
                    occurred_at: None,
                    actor: &command.header.actor,
                    reason_code: Some(&"SAGA_COMPENSATION".to_owned()),
                    metadata: json!({"saga_id": command.saga_id, "step": command.step}),
                    reverses_ledger_tx_id: Some(command.saga_id),
                    held_step: None,
                })
            }
        }
    }

    /// Settles a held leg of a saga that posted: its amounts stop being unsettled. Done
    /// once; a leg that is not held (settled before, or compensated) has nothing to do.
    pub(super) fn release_step(&mut self, command: &SagaStepCommand) -> Outcome {
        let tenant_id = command.tenant_id;
        if !matches!(
            self.snapshot.keys.get(&(tenant_id, command.forward_key())).map(|r| &r.outcome),
            Some(KeyOutcome::Posted { .. })
        ) {
            return Outcome::Rejected(Rejection::invalid("step", "only a posted saga leg can be released"));
        }
        let Some(leg) = self.snapshot.originals.get(&command.saga_id).filter(|o| o.tenant_id == tenant_id).cloned() else {
            return Outcome::Completed;
        };
        if !leg.held {
            return Outcome::Completed;
        }
        let mut released = Vec::with_capacity(leg.entries.len());
        for entry in &leg.entries {
            let mut account = self.snapshot.accounts.get(&entry.account_id).expect("the leg's accounts are prefetched").clone();
            if account.release(entry.side, entry.amount_minor).is_none() {
                // the projection disagrees with the hold rows: refuse rather than guess
                return Outcome::Rejected(Rejection::invalid("step", "the leg's amounts are not unsettled on its accounts"));
            }
            released.push(account);
        }
        for account in released {
            self.writes.touched_accounts.insert(account.account_id);
            self.snapshot.accounts.insert(account.account_id, account);
        }
        self.settle_hold(command.saga_id);
        Outcome::Completed
    }

    pub(super) fn settle_hold(&mut self, saga_id: Uuid) {
        if let Some(leg) = self.snapshot.originals.get_mut(&saga_id) {
            leg.held = false;
        }
        self.writes.holds_settled.push(saga_id);
    }

    /// Creates this shard's clearing account for the tenant and currency if it is new.
    pub(super) fn ensure_clearing_account(&mut self, tenant_id: Uuid, currency: Currency) {
        let account_id = crate::saga::clearing_account_id(tenant_id, self.input.shard_id, currency);
        if self.snapshot.accounts.contains_key(&account_id) {
            return;
        }
        let command = CreateAccountCommand {
            tenant_id,
            account_id,
            code: clearing_account_code(self.input.shard_id, currency),
            account_type: CLEARING_ACCOUNT_TYPE,
            currency,
            allow_negative: true,
            metadata: json!({"system": "clearing"}),
        };
        self.create_account(&command);
    }
}

#[cfg(test)]
mod tests;
