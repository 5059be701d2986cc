//! Reversing a posted transaction: once, mirrored entry by entry.

use super::*;
use crate::account::Unsettled;
use crate::command::{EntryCommand, ReverseCommand};
use crate::ids::IdSource;
use crate::rejection::Rejection;
use serde_json::json;

impl<I: IdSource> Planner<'_, I> {
    pub(super) fn reverse(&mut self, command: &ReverseCommand) -> Outcome {
        let (tenant_id, key, fingerprint) = (command.tenant_id, &command.idempotency_key, &command.fingerprint);
        if let Some(answer) = self.check_key(tenant_id, key, fingerprint) {
            return answer;
        }
        let Some(original) = self.snapshot.originals.get(&command.ledger_tx_id).filter(|o| o.tenant_id == tenant_id) else {
            return Outcome::Rejected(Rejection::TransactionNotFound);
        };
        if original.tx_type == TX_TYPE_REVERSAL {
            return Outcome::Rejected(Rejection::invalid(
                "ledger_tx_id",
                "a reversal cannot itself be reversed; post a new transaction to correct it",
            ));
        }
        if let Some(reversal_tx_id) = original.reversed_by {
            return self.refuse(tenant_id, key, fingerprint, Rejection::AlreadyReversed { reversal_tx_id });
        }
        let mirrored: Vec<EntryCommand> =
            original.entries.iter().map(|e| EntryCommand { side: e.side.opposite(), ..e.clone() }).collect();
        let business_ref = original.business_ref.clone();
        let seqs = original.seqs.clone();
        let effects = match self.effects(tenant_id, &mirrored, false, Unsettled::Unchanged) {
            Ok(effects) => effects,
            Err(rejection) => return self.refuse(tenant_id, key, fingerprint, rejection),
        };
        let outcome = self.accept(Accepted {
            tenant_id,
            idempotency_key: key,
            fingerprint,
            tx_type: TX_TYPE_REVERSAL,
            entries: &mirrored,
            entry_seqs: &seqs,
            ledger_tx_id: None,
            effects,
            external_ref: None,
            business_ref: business_ref.as_ref(),
            occurred_at: None,
            actor: &command.actor,
            reason_code: Some(&command.reason_code),
            metadata: json!({}),
            reverses_ledger_tx_id: Some(command.ledger_tx_id),
            held_step: None,
        });
        if let Outcome::Posted(posted) = &outcome {
            self.snapshot.originals.get_mut(&command.ledger_tx_id).expect("looked up above").reversed_by =
                Some(posted.ledger_tx_id);
            self.writes.reversals.push(ReversalRow {
                tenant_id,
                reversed_ledger_tx_id: command.ledger_tx_id,
                reversal_ledger_tx_id: posted.ledger_tx_id,
            });
        }
        outcome
    }
}
