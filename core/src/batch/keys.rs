//! Idempotency keys and external-reference claims: replay, conflict, claim, complete,
//! abandon.

use super::*;
use crate::command::{
    AbandonKeyCommand, ClaimKeyCommand, ClaimRefCommand, CompleteKeyCommand, CompleteRefCommand, ExternalRef, KeyCompletion,
    RefCompletion,
};
use crate::ids::IdSource;
use crate::rejection::Rejection;
use chrono::Duration;
use uuid::Uuid;

impl<I: IdSource> Planner<'_, I> {
    /// The answer of an already used key, if any: a replay or a conflict. A key claimed
    /// for this very request, or released, lets the request go on.
    pub(super) fn check_key(&self, tenant_id: Uuid, key: &str, fingerprint: &str) -> Option<Outcome> {
        let record = self.snapshot.keys.get(&(tenant_id, key.to_owned()))?;
        let same = record.fingerprint == fingerprint;
        match &record.outcome {
            KeyOutcome::Retryable => None,
            _ if !same => Some(Outcome::Rejected(Rejection::IdempotencyConflict)),
            KeyOutcome::SagaRunning { saga_id } => Some(Outcome::SagaInFlight { saga_id: *saga_id }),
            KeyOutcome::Processing { .. } => None,
            KeyOutcome::Posted { ledger_tx_id } => Some(Outcome::Replay { ledger_tx_id: *ledger_tx_id }),
            KeyOutcome::Rejected { status, body } => Some(Outcome::ReplayRejection { status: *status, body: body.clone() }),
        }
    }

    pub(super) fn record_key(&mut self, tenant_id: Uuid, key: &str, fingerprint: &str, outcome: KeyOutcome) {
        let (status, target_shard, ledger_tx_id, response_status, response_body) = match &outcome {
            KeyOutcome::Posted { ledger_tx_id } => (KeyStatus::Succeeded, None, Some(*ledger_tx_id), 200, None),
            KeyOutcome::Rejected { status, body } => (KeyStatus::FailedFinal, None, None, *status, Some(body.clone())),
            KeyOutcome::Processing { target_shard } => (KeyStatus::Processing, Some(*target_shard), None, 0, None),
            KeyOutcome::Retryable => (KeyStatus::FailedRetryable, None, None, 0, None),
            KeyOutcome::SagaRunning { saga_id } => (KeyStatus::Processing, None, Some(*saga_id), 0, None),
        };
        self.writes.keys.push(KeyRow {
            tenant_id,
            idempotency_key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            status,
            target_shard,
            ledger_tx_id,
            response_status,
            response_body,
            created_at: self.now(),
            expires_at: self.now() + Duration::days(IDEMPOTENCY_KEY_RETENTION_DAYS),
        });
        self.snapshot.keys.insert((tenant_id, key.to_owned()), KeyRecord { fingerprint: fingerprint.to_owned(), outcome });
    }

    pub(super) fn claim_key(&mut self, command: &ClaimKeyCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        let already = self.snapshot.keys.get(&(tenant_id, key.clone()));
        if !matches!(already, Some(KeyRecord { outcome: KeyOutcome::Processing { .. }, .. })) {
            self.record_key(tenant_id, key, fingerprint, KeyOutcome::Processing { target_shard: command.target_shard });
        }
        Outcome::KeyClaimed
    }

    pub(super) fn complete_key(&mut self, command: &CompleteKeyCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        let claimed = matches!(
            self.snapshot.keys.get(&(tenant_id, key.clone())),
            Some(KeyRecord { outcome: KeyOutcome::Processing { .. }, fingerprint: f }) if f == fingerprint
        );
        // Completions are idempotent and may arrive late or twice: only a claim for this
        // very request moves on, and only once.
        if claimed {
            let outcome = match &command.completion {
                KeyCompletion::Posted { ledger_tx_id } => KeyOutcome::Posted { ledger_tx_id: *ledger_tx_id },
                KeyCompletion::Rejected { status, body } => KeyOutcome::Rejected { status: *status, body: body.clone() },
                KeyCompletion::Released => KeyOutcome::Retryable,
            };
            self.record_key(tenant_id, key, fingerprint, outcome);
        }
        Outcome::Completed
    }

    /// Who holds an external reference on this shard, if anyone but `key`.
    pub(super) fn ref_holder(&self, tenant_id: Uuid, external_ref: &ExternalRef, key: &str) -> Option<Option<Uuid>> {
        let id = (tenant_id, external_ref.clone());
        if let Some(tx) = self.snapshot.external_refs.get(&id) {
            return Some(Some(*tx));
        }
        match self.snapshot.ref_claims.get(&id) {
            Some(claim) if claim.owner_key != key => Some(claim.ledger_tx_id),
            _ => None,
        }
    }

    pub(super) fn claim_ref(&mut self, command: &ClaimRefCommand) -> Outcome {
        let (tenant_id, external_ref, key) = (command.tenant_id, &command.external_ref, &command.idempotency_key);
        if let Some(holder) = self.ref_holder(tenant_id, external_ref, key) {
            return Outcome::RefHeld { ledger_tx_id: holder };
        }
        let id = (tenant_id, external_ref.clone());
        if !self.snapshot.ref_claims.contains_key(&id) {
            let claim = RefClaim { owner_key: key.clone(), ledger_tx_id: None };
            self.write_ref_claim(tenant_id, external_ref, &claim, false);
            self.writes.ref_claims.last_mut().expect("just written").owner_fingerprint = Some(command.fingerprint.clone());
            self.snapshot.ref_claims.insert(id, claim);
        }
        Outcome::RefClaimed
    }

    pub(super) fn complete_ref(&mut self, command: &CompleteRefCommand) -> Outcome {
        let id = (command.tenant_id, command.external_ref.clone());
        let Some(claim) = self.snapshot.ref_claims.get(&id).cloned() else { return Outcome::Completed };
        if claim.owner_key != command.idempotency_key || claim.ledger_tx_id.is_some() {
            return Outcome::Completed;
        }
        match command.completion {
            RefCompletion::Bound { ledger_tx_id } => {
                let bound = RefClaim { ledger_tx_id: Some(ledger_tx_id), ..claim };
                self.write_ref_claim(command.tenant_id, &command.external_ref, &bound, false);
                self.snapshot.ref_claims.insert(id, bound);
            }
            RefCompletion::Released => {
                self.write_ref_claim(command.tenant_id, &command.external_ref, &claim, true);
                self.snapshot.ref_claims.remove(&id);
            }
        }
        Outcome::Completed
    }

    pub(super) fn write_ref_claim(&mut self, tenant_id: Uuid, external_ref: &ExternalRef, claim: &RefClaim, released: bool) {
        self.writes.ref_claims.push(RefClaimRow {
            tenant_id,
            external_ref: external_ref.clone(),
            owner_key: claim.owner_key.clone(),
            owner_fingerprint: None,
            ledger_tx_id: claim.ledger_tx_id,
            released,
        });
    }

    /// The outcome of an abandoned request's key on the shard that decides it; a key not
    /// decided here is refused for good, so that a late copy of the request cannot post.
    pub(super) fn abandon_key(&mut self, command: &AbandonKeyCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        match self.snapshot.keys.get(&(tenant_id, key.clone())).map(|r| &r.outcome) {
            Some(KeyOutcome::Posted { ledger_tx_id }) => Outcome::Replay { ledger_tx_id: *ledger_tx_id },
            Some(KeyOutcome::Rejected { status, body }) => Outcome::ReplayRejection { status: *status, body: body.clone() },
            // claimed here for a request decided elsewhere, or held by a running saga: not
            // this shard's to settle
            Some(KeyOutcome::Processing { .. } | KeyOutcome::SagaRunning { .. }) => Outcome::Rejected(Rejection::InProgress),
            None | Some(KeyOutcome::Retryable) => self.refuse(tenant_id, key, fingerprint, Rejection::RequestAbandoned),
        }
    }

    /// Refuses a keyed command, remembering the refusal under the key when the protocol
    /// says it is replayed.
    pub(super) fn refuse(&mut self, tenant_id: Uuid, key: &str, fingerprint: &str, rejection: Rejection) -> Outcome {
        if rejection.is_stored_under_key() {
            let outcome = KeyOutcome::Rejected { status: rejection.status(), body: rejection.to_body() };
            self.record_key(tenant_id, key, fingerprint, outcome);
        }
        Outcome::Rejected(rejection)
    }
}

#[cfg(test)]
mod tests;
