//! The claim sweeper: settles the claims of requests whose router died between claiming
//! a key or an external reference on its home shard and recording the outcome there.
//!
//! Such a claim would otherwise stay open until the client retried with the same key: a
//! lookup by that key finds nothing, and the reference answers `IN_PROGRESS` to every
//! other key. The request itself cannot be finished (the home keeps no request body), so
//! the sweeper asks the shard that decides it (`AbandonKeyCommand`): if the request was
//! decided there, its outcome is recorded at the homes; if not, the request is refused
//! there for good with `REQUEST_ABANDONED` first, so that a late copy of it, still queued
//! somewhere, can never post after its claims were settled. That one shard writer
//! serializes the late copy and the sweeper's question: whichever comes first decides,
//! and both see the same answer.

use crate::Router;
use ledger_core::command::{AbandonKeyCommand, Command, CompleteKeyCommand, CompleteRefCommand, KeyCompletion, RefCompletion};
use ledger_core::error_code::ErrorCode;
use ledger_core::ring::ShardId;
use ledger_protocol::internal::{ClaimAnswer, ShardReply, ShardRequest, StaleClaims, StaleKeyClaim, StaleRefClaim};
use tracing::{info, warn};
use uuid::Uuid;

impl Router {
    /// Settles the abandoned claims whose home is `shard` (one pass of the recovery loop,
    /// [`Router::recover`]).
    pub(crate) async fn settle_claims_on(&self, shard: ShardId) {
        let ask = ShardRequest::StaleClaims { idle_ms: self.config.limits.claim_abandon_after_ms, limit: 100 };
        let reply = self.link.send(shard, &ask).await;
        let Ok(stale) = reply.data::<StaleClaims>("stale claims") else { return };
        for claim in stale.keys {
            self.settle_key_claim(shard, claim).await;
        }
        for claim in stale.refs {
            self.settle_ref_claim(shard, claim).await;
        }
    }

    async fn settle_key_claim(&self, home: ShardId, claim: StaleKeyClaim) {
        let target = claim.target_shard;
        let Some(completion) = self.decide_abandoned(target, claim.tenant_id, &claim.idempotency_key, &claim.fingerprint).await
        else {
            return;
        };
        info!(home, target, key = %claim.idempotency_key, ?completion, "settling an abandoned key claim");
        let complete = CompleteKeyCommand {
            tenant_id: claim.tenant_id,
            idempotency_key: claim.idempotency_key,
            fingerprint: claim.fingerprint,
            completion,
        };
        self.link.write(home, Command::CompleteKey(complete)).await;
    }

    /// A reference's claim names only its request's key: the key's home knows the outcome
    /// (a claim there is settled first, by [`Router::settle_key_claim`]), or, when the key's
    /// home is also the shard that decides the request, is asked to abandon it.
    async fn settle_ref_claim(&self, home: ShardId, claim: StaleRefClaim) {
        let key_home = self.ring.shard_for_key(claim.tenant_id, &claim.owner_key);
        let fingerprint = claim.owner_fingerprint.clone().unwrap_or_default();
        let Some(outcome) = self.decide_abandoned(key_home, claim.tenant_id, &claim.owner_key, &fingerprint).await else {
            return;
        };
        let completion = match outcome {
            KeyCompletion::Posted { ledger_tx_id } => RefCompletion::Bound { ledger_tx_id },
            KeyCompletion::Rejected { .. } | KeyCompletion::Released => RefCompletion::Released,
        };
        info!(home, key = %claim.owner_key, ?completion, "settling an abandoned reference claim");
        let complete = CompleteRefCommand {
            tenant_id: claim.tenant_id,
            external_ref: claim.external_ref,
            idempotency_key: claim.owner_key,
            completion,
        };
        self.link.write(home, Command::CompleteRef(complete)).await;
    }

    /// The outcome of an abandoned request on the shard that decides it, abandoning it
    /// there if it was not decided; `None` when that shard cannot settle it now (it is
    /// unreachable, or the key is claimed there for another shard or held by a saga).
    async fn decide_abandoned(&self, shard: ShardId, tenant_id: Uuid, key: &str, fingerprint: &str) -> Option<KeyCompletion> {
        let abandon = AbandonKeyCommand { tenant_id, idempotency_key: key.to_owned(), fingerprint: fingerprint.to_owned() };
        let answer = self.link.write(shard, Command::AbandonKey(abandon)).await;
        if let ShardReply::Claim(ClaimAnswer::Replay { ledger_tx_id }) = answer {
            return Some(KeyCompletion::Posted { ledger_tx_id });
        }
        if answer.outcome_unknown() {
            warn!(shard, key, reply = %answer.client_body(), "cannot settle an abandoned claim now; will retry");
            return None;
        }
        if answer.refusal() == Some(ErrorCode::InProgress) {
            return None;
        }
        answer.key_completion()
    }
}
