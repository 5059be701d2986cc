//! One request to the ledger over NATS, typed both ways: the body is a protocol request
//! type, the answer the protocol reply type or the protocol's refusal. Which one came is
//! told by the service's error header, as the protocol says, never by trying both.

use anyhow::Context;
use ledger_protocol::reply::ErrorReply;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use uuid::Uuid;

pub struct Client {
    pub nats: async_nats::Client,
    pub tenant: Uuid,
    pub timeout: Duration,
}

/// A refused request: the protocol's error, and the body as it came (for `--json`).
pub struct Refused {
    pub reply: ErrorReply,
    pub raw: String,
}

/// An answer: the reply as the type the operation returns, and as it came.
pub struct Answer<T> {
    pub reply: T,
    pub raw: String,
}

impl Client {
    /// A client that waits at least `at_least` (for operator scans).
    pub fn patient(&self, at_least: Duration) -> Client {
        Client { nats: self.nats.clone(), tenant: self.tenant, timeout: self.timeout.max(at_least) }
    }

    pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        operation: &str,
        request: &Req,
    ) -> anyhow::Result<Result<Answer<Rep>, Refused>> {
        let subject = match operation.strip_prefix("admin.") {
            Some(op) => ledger_protocol::subject::admin_subject(op),
            None => ledger_protocol::subject::tenant_subject(self.tenant, operation),
        };
        let payload = serde_json::to_vec(request)?;
        let reply = tokio::time::timeout(self.timeout, self.nats.request(subject.clone(), payload.into()))
            .await
            .with_context(|| format!("no reply on {subject} within {:?}", self.timeout))?
            .with_context(|| format!("request on {subject} failed (is the cluster running?)"))?;
        let raw = String::from_utf8(reply.payload.to_vec()).context("the reply is not UTF-8")?;
        let refused = reply.headers.as_ref().and_then(|h| h.get("Nats-Service-Error")).is_some();
        if refused {
            let error: ErrorReply =
                serde_json::from_str(&raw).with_context(|| format!("a refusal not in the protocol's form: {raw}"))?;
            return Ok(Err(Refused { reply: error, raw }));
        }
        let reply: Rep =
            serde_json::from_str(&raw).with_context(|| format!("a reply to {operation} not in the protocol's form: {raw}"))?;
        Ok(Ok(Answer { reply, raw }))
    }
}
