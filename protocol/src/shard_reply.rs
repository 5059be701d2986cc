//! A shard's answer to a router, typed: the router branches on variants and error codes,
//! never on the text of a body. What a client will see travels as raw JSON and is
//! forwarded unparsed; the status and the NATS error headers are rendered once, at the
//! router's edge, from the code ([`ShardReply::status`]).

use crate::internal::{ClaimAnswer, Redirect};
use ledger_core::command::KeyCompletion;
use ledger_core::error_code::ErrorCode;
use ledger_core::rejection::Rejection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

// Externally tagged: raw JSON inside an internally tagged enum cannot be decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardReply {
    /// A result as the client gets it (an account, a statement, a transaction object), or
    /// the data an internal request asked for, whose type the request names.
    Ok(Box<RawValue>),
    /// A post or reversal that posted, now or before: its id and the client's reply.
    Posted { ledger_tx_id: Uuid, reply: Box<RawValue> },
    /// A refusal: its code, and the error body the client gets.
    Refused { code: ErrorCode, body: Box<RawValue> },
    /// An answer to a claim, a completion or a saga's record.
    Claim(ClaimAnswer),
    /// A lookup this shard cannot finish itself.
    Redirect(Redirect),
    /// The replies to a `WriteBatch`, one per command, in order.
    Batch(Vec<ShardReply>),
}

impl PartialEq for ShardReply {
    fn eq(&self, other: &ShardReply) -> bool {
        serde_json::to_string(self).ok() == serde_json::to_string(other).ok()
    }
}

fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("replies serialize")
}

/// The error body of the protocol: `{"error": {"code", "message", "details"}}`.
pub fn error_body(code: ErrorCode, message: &str, details: Value) -> Value {
    serde_json::json!({"error": {"code": code, "message": message, "details": details}})
}

impl ShardReply {
    pub fn ok<T: Serialize + ?Sized>(body: &T) -> ShardReply {
        ShardReply::Ok(raw(body))
    }

    pub fn posted<T: Serialize + ?Sized>(ledger_tx_id: Uuid, reply: &T) -> ShardReply {
        ShardReply::Posted { ledger_tx_id, reply: raw(reply) }
    }

    pub fn rejected(rejection: &Rejection) -> ShardReply {
        ShardReply::Refused { code: rejection.error_code(), body: raw(&rejection.to_body()) }
    }

    /// A refusal stored under a key or in a saga's log, replayed as it was first given.
    /// Its code is read from the stored body: a body without one is a corrupt record.
    pub fn stored_refusal(body: &Value) -> ShardReply {
        match body.pointer("/error/code").and_then(Value::as_str).and_then(ErrorCode::parse) {
            Some(code) => ShardReply::Refused { code, body: raw(body) },
            None => ShardReply::internal(&format!("a stored refusal without a known code: {body}")),
        }
    }

    pub fn error(code: ErrorCode, message: &str, details: Value) -> ShardReply {
        ShardReply::Refused { code, body: raw(&error_body(code, message, details)) }
    }

    pub fn unavailable(message: &str) -> ShardReply {
        ShardReply::error(ErrorCode::ShardUnavailable, message, Value::Object(Default::default()))
    }

    pub fn internal(message: &str) -> ShardReply {
        ShardReply::error(ErrorCode::Internal, message, Value::Object(Default::default()))
    }

    /// The code of a refusal; `None` for every answer that is not one.
    pub fn refusal(&self) -> Option<ErrorCode> {
        match self {
            ShardReply::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_refusal(&self) -> bool {
        self.refusal().is_some()
    }

    /// A refusal whose outcome is unknown (a shard unreachable or failing): retry.
    pub fn outcome_unknown(&self) -> bool {
        self.refusal().is_some_and(ErrorCode::outcome_unknown)
    }

    /// What a refusal does to the key it answered: remembered (a business refusal, replayed
    /// to a retry) or released; `None` for an answer that is not a refusal.
    pub fn key_completion(&self) -> Option<KeyCompletion> {
        let code = self.refusal()?;
        Some(if code.is_remembered_under_key() {
            KeyCompletion::Rejected { status: code.status(), body: self.body_value() }
        } else {
            KeyCompletion::Released
        })
    }

    /// The protocol status the client gets: 200, or the refusal's.
    pub fn status(&self) -> u16 {
        self.refusal().map_or(200, ErrorCode::status)
    }

    /// The `ledger_tx_id` of a post or reversal that posted.
    pub fn ledger_tx_id(&self) -> Option<Uuid> {
        match self {
            ShardReply::Posted { ledger_tx_id, .. } => Some(*ledger_tx_id),
            _ => None,
        }
    }

    /// The body the client gets. Answers meant for a router only (claims, redirects,
    /// batches) never reach a client; if one did, it would be a bug, said as such.
    pub fn client_body(&self) -> std::borrow::Cow<'_, str> {
        match self {
            ShardReply::Ok(body) | ShardReply::Posted { reply: body, .. } | ShardReply::Refused { body, .. } => body.get().into(),
            ShardReply::Claim(_) | ShardReply::Redirect(_) | ShardReply::Batch(_) => {
                let internal = ShardReply::internal("an internal answer reached the edge");
                internal.client_body().into_owned().into()
            }
        }
    }

    /// The client's body as a JSON value (to store a refusal, to merge saga legs).
    pub fn body_value(&self) -> Value {
        serde_json::from_str(&self.client_body()).unwrap_or(Value::Null)
    }

    /// The data of an `Ok` answer as the type the request asked for; any other answer
    /// comes back as it is, a malformed one as `INTERNAL`.
    pub fn data<T: DeserializeOwned>(&self, what: &str) -> Result<T, ShardReply> {
        match self {
            ShardReply::Ok(body) => serde_json::from_str(body.get())
                .map_err(|error| ShardReply::internal(&format!("malformed {what} from a shard: {error}"))),
            other => Err(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_its_code_and_the_edge_takes_the_status_from_it() {
        let reply = ShardReply::rejected(&Rejection::IdempotencyConflict);
        assert_eq!(reply.refusal(), Some(ErrorCode::IdempotencyConflict));
        assert_eq!(reply.status(), 409);
        assert_eq!(reply.body_value()["error"]["code"], "IDEMPOTENCY_CONFLICT");
        let wire: ShardReply = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        assert_eq!(wire, reply);
        assert!(ShardReply::unavailable("x").outcome_unknown());
        assert!(!reply.outcome_unknown());
    }

    #[test]
    fn a_stored_refusal_replays_its_body_and_one_without_a_code_is_internal() {
        let body = Rejection::AccountFrozen { account_id: Uuid::nil() }.to_body();
        let replayed = ShardReply::stored_refusal(&body);
        assert_eq!((replayed.refusal(), replayed.body_value()), (Some(ErrorCode::AccountFrozen), body));
        assert_eq!(ShardReply::stored_refusal(&serde_json::json!({"error": {}})).refusal(), Some(ErrorCode::Internal));
    }

    #[test]
    fn answers_for_routers_never_reach_a_client_as_such() {
        let claim = ShardReply::Claim(ClaimAnswer::Claimed);
        assert_eq!(claim.status(), 200);
        assert_eq!(claim.body_value()["error"]["code"], "INTERNAL");
        let posted = ShardReply::posted(Uuid::nil(), &serde_json::json!({"ledger_tx_id": Uuid::nil()}));
        assert_eq!(posted.ledger_tx_id(), Some(Uuid::nil()));
        assert_eq!(posted.data::<Value>("x"), Err(posted.clone()));
    }
}
