//! Router ↔ shard node messages. JSON, like the public protocol: simple to inspect with
//! `nats sub`, and the shard's database work dominates the cost of a request.

use ledger_core::command::{Command, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShardRequest {
    /// A write, decided and committed by the shard's single writer.
    Write {
        command: Command,
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

/// A shard's answer: the public reply body, and its status (200 or an error status).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReply {
    pub status: u16,
    pub body: Value,
}

impl ShardReply {
    pub fn ok(body: Value) -> ShardReply {
        ShardReply { status: 200, body }
    }

    pub fn rejected(rejection: &ledger_core::rejection::Rejection) -> ShardReply {
        ShardReply { status: rejection.status(), body: rejection.to_body() }
    }

    pub fn error(status: u16, code: &str, message: &str) -> ShardReply {
        ShardReply { status, body: serde_json::json!({"error": {"code": code, "message": message, "details": {}}}) }
    }

    pub fn unavailable(message: &str) -> ShardReply {
        ShardReply::error(503, "SHARD_UNAVAILABLE", message)
    }

    pub fn internal(message: &str) -> ShardReply {
        ShardReply::error(500, "INTERNAL", message)
    }

    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }
}
