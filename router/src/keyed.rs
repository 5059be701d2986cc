//! Posts and reversals on one shard: the key (and external reference) claimed on their
//! home shards first, the target deciding exactly once, the homes told the outcome.

use crate::dispatch::rejected;
use crate::*;
use ledger_core::command::{
    ClaimKeyCommand, ClaimRefCommand, Command, CompleteKeyCommand, CompleteRefCommand, ExternalRef, KeyCompletion, RefCompletion,
};
use ledger_core::error_code::ErrorCode;
use ledger_core::rejection::Rejection;
use ledger_core::ring::ShardId;
use ledger_protocol::internal::{ClaimAnswer, ShardReply, ShardRequest};
use uuid::Uuid;

impl Router {
    /// A post or reversal. Its idempotency key (and external reference) must be unique
    /// across the cluster, so each is claimed on its home shard first when that is not the
    /// target shard; the target decides and posts exactly once; then the homes learn the
    /// outcome ([`Router::complete`] says which completions wait and which do not).
    pub(crate) async fn keyed_write(&self, target: ShardId, mut command: Command) -> ShardReply {
        let tenant_id = command.tenant_id();
        let key = command.idempotency_key().expect("posts and reversals carry a key").to_owned();
        let fingerprint = match &command {
            Command::Post(c) => c.fingerprint.clone(),
            Command::Reverse(c) => c.fingerprint.clone(),
            _ => unreachable!("keyed writes are posts and reversals"),
        };
        let key_home = self.ring.shard_for_key(tenant_id, &key);
        let reference = command.external_ref().cloned();
        let ref_home = reference.as_ref().map(|r| self.ring.shard_for_key(tenant_id, &external_ref_home_key(r)));
        let claims = Claims {
            tenant_id,
            key,
            fingerprint,
            key_home: (key_home != target).then_some(key_home),
            reference: reference.zip(ref_home).filter(|(_, home)| *home != target),
        };

        if let Some(home) = claims.key_home {
            let claim = ClaimKeyCommand {
                tenant_id,
                idempotency_key: claims.key.clone(),
                fingerprint: claims.fingerprint.clone(),
                target_shard: target,
            };
            let answer = self.link.write(home, Command::ClaimKey(claim)).await;
            match answer {
                ShardReply::Claim(ClaimAnswer::Claimed) => {}
                ShardReply::Claim(ClaimAnswer::Replay { ledger_tx_id }) => return self.replay(tenant_id, ledger_tx_id).await,
                ShardReply::Claim(ClaimAnswer::SagaInFlight { .. }) => return rejected(Rejection::InProgress),
                // a conflict, a replayed rejection, or the home is unavailable
                ShardReply::Refused { .. } => return answer,
                other => return ShardReply::internal(&format!("unexpected answer to a key claim: {other:?}")),
            }
        }
        if let Some((external_ref, home)) = &claims.reference {
            let claim = ClaimRefCommand {
                tenant_id,
                external_ref: external_ref.clone(),
                idempotency_key: claims.key.clone(),
                fingerprint: claims.fingerprint.clone(),
            };
            let answer = self.link.write(*home, Command::ClaimRef(claim)).await;
            match answer {
                ShardReply::Claim(ClaimAnswer::Claimed) => {}
                ShardReply::Claim(ClaimAnswer::Held { ledger_tx_id: Some(holder) }) => {
                    if let Command::Post(post) = &mut command {
                        post.external_ref_held_by = Some(holder);
                    }
                }
                ShardReply::Claim(ClaimAnswer::Held { ledger_tx_id: None }) => {
                    let refused = rejected(Rejection::InProgress);
                    self.complete(claims.without_reference(), &refused).await;
                    return refused;
                }
                _ => {
                    self.complete(claims.without_reference(), &answer).await;
                    return answer;
                }
            }
        }
        let reply = self.link.write(target, command).await;
        self.complete(claims, &reply).await;
        reply
    }

    /// Records the target's decision on the home shards: a reference binding or release and
    /// a key release before the client hears the outcome, a consumed key in the background.
    pub(crate) async fn complete(&self, claims: Claims, reply: &ShardReply) {
        let (key_completion, ref_completion) = match reply {
            ShardReply::Posted { ledger_tx_id, .. } => {
                (KeyCompletion::Posted { ledger_tx_id: *ledger_tx_id }, RefCompletion::Bound { ledger_tx_id: *ledger_tx_id })
            }
            // the outcome is not known: leave the claims, a retry with the key finishes them
            _ if reply.outcome_unknown() => return,
            // the key belongs to another request: not ours to complete
            _ if reply.refusal() == Some(ErrorCode::IdempotencyConflict) => return,
            _ => match reply.key_completion() {
                Some(key) => (key, RefCompletion::Released),
                None => return,
            },
        };
        // The reference's home learns the outcome before the client does: a second request
        // with the same reference must see it posted (a duplicate), not still pending.
        if let Some((external_ref, home)) = claims.reference.clone() {
            let complete = CompleteRefCommand {
                tenant_id: claims.tenant_id,
                external_ref,
                idempotency_key: claims.key.clone(),
                completion: ref_completion,
            };
            self.link.write(home, Command::CompleteRef(complete)).await;
        }
        let Some(home) = claims.key_home else { return };
        let released = key_completion == KeyCompletion::Released;
        let complete = CompleteKeyCommand {
            tenant_id: claims.tenant_id,
            idempotency_key: claims.key,
            fingerprint: claims.fingerprint,
            completion: key_completion,
        };
        let link = self.link.clone();
        let send = async move {
            link.write(home, Command::CompleteKey(complete)).await;
        };
        // A refusal that consumes no key must have freed it before the client hears of it,
        // or an immediate corrected retry would meet the stale claim. Outcomes that consume
        // the key can be recorded later: until then the home sends retries to the target,
        // which replays.
        if released {
            send.await;
        } else {
            tokio::spawn(send);
        }
    }

    pub(crate) async fn replay(&self, tenant_id: Uuid, ledger_tx_id: Uuid) -> ShardReply {
        match self.shard_of_transaction(ledger_tx_id) {
            Some(shard) => self.link.send(shard, &ShardRequest::PostReply { tenant_id, ledger_tx_id }).await,
            None => ShardReply::internal("a key names a transaction on an unknown shard"),
        }
    }
}

/// What a keyed write claimed on home shards other than its target.
#[derive(Clone)]
pub(crate) struct Claims {
    tenant_id: Uuid,
    key: String,
    fingerprint: String,
    key_home: Option<ShardId>,
    reference: Option<(ExternalRef, ShardId)>,
}

impl Claims {
    pub(crate) fn without_reference(&self) -> Claims {
        Claims {
            tenant_id: self.tenant_id,
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            key_home: self.key_home,
            reference: None,
        }
    }
}

/// The string whose place on the ring is an external reference's home shard.
pub fn external_ref_home_key(external_ref: &ExternalRef) -> String {
    format!("external-ref\u{1f}{}\u{1f}{}", external_ref.ref_type, external_ref.reference)
}
