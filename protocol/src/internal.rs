//! Router ↔ shard node messages. JSON, like the public protocol: simple to inspect with
//! `nats sub`, and the shard's database work dominates the cost of a request.

use ledger_core::command::{Command, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

// Externally tagged: an internally tagged enum would buffer every message before decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardRequest {
    /// A write, decided and committed by the shard's single writer.
    Write {
        command: Box<Command>,
    },
    /// Several writes in one message: they reach the writer together, so they commit in
    /// the same batch; the reply's body is the array of their replies, in order.
    WriteBatch {
        commands: Vec<Command>,
    },
    GetAccount {
        tenant_id: Uuid,
        account_id: Uuid,
    },
    Statement {
        tenant_id: Uuid,
        query: StatementQuery,
    },
    GetTransaction {
        tenant_id: Uuid,
        by: TransactionLookup,
    },
    /// The reply a post or reversal on this shard gave, for a replay decided elsewhere.
    PostReply {
        ledger_tx_id: Uuid,
    },
}

/// Answers to claims and completions (the body of a 200 [`ShardReply`]). Refusals
/// (conflict, a replayed rejection) come back as ordinary error replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "claim", rename_all = "snake_case")]
pub enum ClaimAnswer {
    Claimed,
    /// The key already posted this transaction (on the shard its id names).
    Replay {
        ledger_tx_id: Uuid,
    },
    /// Another request holds the external reference; posted if the id is known.
    Held {
        ledger_tx_id: Option<Uuid>,
    },
    Completed,
}

/// A lookup this shard cannot finish itself: the body `{"redirect": ...}` of a 200 reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// The transaction lives on the shard its id names.
    Transaction { ledger_tx_id: Uuid },
    /// The key was claimed here for a request that this shard decided; ask it.
    KeyOnShard { shard_id: u16 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementQuery {
    pub account_id: Uuid,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: u32,
    /// Commit sequence after which to continue.
    pub after_commit_seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionLookup {
    Id(Uuid),
    IdempotencyKey(String),
    ExternalRef(ExternalRef),
}

/// A shard's answer: the public reply body, and its status (200 or an error status). The
/// body stays raw JSON from the shard to the client: a router forwards it unparsed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReply {
    pub status: u16,
    pub body: Box<RawValue>,
}

fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("replies serialize")
}

impl ShardReply {
    pub fn ok<T: Serialize + ?Sized>(body: &T) -> ShardReply {
        ShardReply { status: 200, body: raw(body) }
    }

    pub fn with_status(status: u16, body: &Value) -> ShardReply {
        ShardReply { status, body: raw(body) }
    }

    pub fn claim(answer: ClaimAnswer) -> ShardReply {
        ShardReply::ok(&answer)
    }

    pub fn redirect(redirect: Redirect) -> ShardReply {
        ShardReply::ok(&serde_json::json!({ "redirect": redirect }))
    }

    pub fn as_claim(&self) -> Option<ClaimAnswer> {
        if self.status != 200 {
            return None;
        }
        serde_json::from_str(self.body.get()).ok()
    }

    pub fn as_redirect(&self) -> Option<Redirect> {
        #[derive(Deserialize)]
        struct Redirected {
            redirect: Redirect,
        }
        if self.status != 200 {
            return None;
        }
        serde_json::from_str::<Redirected>(self.body.get()).ok().map(|r| r.redirect)
    }

    /// The `ledger_tx_id` of a successful post or reversal reply.
    pub fn ledger_tx_id(&self) -> Option<Uuid> {
        #[derive(Deserialize)]
        struct Posted {
            ledger_tx_id: Uuid,
        }
        if self.status != 200 {
            return None;
        }
        serde_json::from_str::<Posted>(self.body.get()).ok().map(|p| p.ledger_tx_id)
    }

    pub fn rejected(rejection: &ledger_core::rejection::Rejection) -> ShardReply {
        ShardReply { status: rejection.status(), body: raw(&rejection.to_body()) }
    }

    pub fn error(status: u16, code: &str, message: &str) -> ShardReply {
        ShardReply { status, body: raw(&serde_json::json!({"error": {"code": code, "message": message, "details": {}}})) }
    }

    pub fn unavailable(message: &str) -> ShardReply {
        ShardReply::error(503, "SHARD_UNAVAILABLE", message)
    }

    pub fn internal(message: &str) -> ShardReply {
        ShardReply::error(500, "INTERNAL", message)
    }

    pub fn error_code(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Failed {
            error: Code,
        }
        #[derive(Deserialize)]
        struct Code {
            code: String,
        }
        if self.status == 200 {
            return None;
        }
        serde_json::from_str::<Failed>(self.body.get()).ok().map(|f| f.error.code)
    }

    /// The body as a JSON value (for stored rejections, which are kept as JSON).
    pub fn body_value(&self) -> Value {
        serde_json::from_str(self.body.get()).unwrap_or(Value::Null)
    }
}
