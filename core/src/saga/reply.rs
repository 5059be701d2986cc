//! The client's reply a saga stores in its log when it ends: one post reply made of its
//! legs' replies, or the refusal that turned it back with the saga's story beside it.

use super::*;
use serde_json::json;

/// The replies of a saga's posted legs, by step.
pub type LegReplies = BTreeMap<usize, Value>;

/// One post reply for the whole transaction: the client's entries from every leg, in
/// their request order; clearing entries are the ledger's own bookkeeping and stay out.
pub fn posted_reply(record: &SagaRecord, leg_replies: &LegReplies) -> Value {
    let mut entries: Vec<Value> = Vec::new();
    let mut posted_at = String::new();
    for (step, reply) in leg_replies {
        let shard = record.steps[*step].shard;
        if let Some(at) = reply["posted_at"].as_str()
            && at > posted_at.as_str()
        {
            posted_at = at.to_owned();
        }
        for entry in reply["entries"].as_array().into_iter().flatten() {
            let account: Option<Uuid> = entry["account_id"].as_str().and_then(|a| a.parse().ok());
            let currency = entry["currency"].as_str().and_then(Currency::parse);
            let is_clearing =
                matches!((account, currency), (Some(a), Some(c)) if a == clearing_account_id(record.tenant_id, shard, c));
            if !is_clearing {
                entries.push(entry.clone());
            }
        }
    }
    entries.sort_by_key(|e| e["entry_seq"].as_i64().unwrap_or(i64::MAX));
    json!({
        "ledger_tx_id": record.saga_id,
        "status": "POSTED",
        "posted_at": posted_at,
        "replayed": false,
        "entries": entries,
    })
}

/// The refusal that turned the saga back, with the saga's story in `details.saga`.
pub fn refusal_reply(record: &SagaRecord) -> Value {
    let Some(failure) = &record.failure else { return Value::Null };
    let mut body = failure.body.clone();
    let compensations: Vec<Value> = record
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status == StepStatus::Compensated)
        .map(|(i, s)| json!({"step": i, "shard": s.shard, "ledger_tx_id": s.compensation_tx_id}))
        .collect();
    let failed_leg = failure.step.map(|i| json!({"step": i, "shard": record.steps[i].shard}));
    if let Some(details) = body.pointer_mut("/error/details")
        && details.is_object()
    {
        details["saga"] = json!({
            "saga_id": record.saga_id,
            "failed_leg": failed_leg,
            "compensations": compensations,
        });
    }
    body
}
