//! Tenant-scoped idempotency: replays, conflicts, replayed rejections, concurrent retries.

use ledger_tests::{Cluster, transfer_body};
use serde_json::json;

#[tokio::test]
async fn replay_returns_the_stored_reply_marked_replayed() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "USD", false).await;
    cluster.create_account("alice", "LIABILITY", "USD", false).await;
    let mut first = cluster.transfer("pay-1", "cash", "alice", 1_000, "USD").await.ok();
    assert_eq!(first["replayed"], false);
    let mut again = cluster.transfer("pay-1", "cash", "alice", 1_000, "USD").await.ok();
    assert_eq!(again["replayed"], true);
    first["replayed"] = json!(true);
    again["replayed"] = json!(true);
    assert_eq!(first, again, "a replay is the stored reply, byte for byte but for `replayed`");

    // naming the accounts by id instead of code is the same request
    let cash = ledger_core::ids::account_id(cluster.tenant, "cash");
    let alice = ledger_core::ids::account_id(cluster.tenant, "alice");
    let mut by_id = transfer_body("pay-1", "", "", 1_000, "USD");
    by_id["entries"][0] = json!({"account_id": cash, "side": "DEBIT", "amount_minor": 1_000, "currency": "USD"});
    by_id["entries"][1] = json!({"account_id": alice, "side": "CREDIT", "amount_minor": 1_000, "currency": "USD"});
    let by_id = cluster.call("transactions.post", by_id).await.ok();
    assert_eq!(by_id["ledger_tx_id"], first["ledger_tx_id"]);
    assert_eq!(cluster.balance("alice").await, 1_000, "posted once");

    // the key also finds the transaction
    let found = cluster.call("transactions.get", json!({"idempotency_key": "pay-1"})).await.ok();
    assert_eq!(found["ledger_tx_id"], first["ledger_tx_id"]);

    // a different payload under the same key is refused, nothing posted
    cluster.transfer("pay-1", "cash", "alice", 1_001, "USD").await.err("IDEMPOTENCY_CONFLICT", 409);
    // the key space is shared with reversals
    cluster
        .call(
            "transactions.reverse",
            json!({"idempotency_key": "pay-1", "ledger_tx_id": first["ledger_tx_id"], "actor": "ops", "reason_code": "X"}),
        )
        .await
        .err("IDEMPOTENCY_CONFLICT", 409);
    assert_eq!(cluster.balance("alice").await, 1_000);

    // keys are per tenant: another tenant may use the same key for its own request
    let other = uuid::Uuid::new_v4();
    for (code, kind) in [("cash", "ASSET"), ("alice", "LIABILITY")] {
        cluster.call_as(other, "accounts.create", &json!({"code": code, "type": kind, "currency": "USD"})).await.ok();
    }
    let theirs = cluster.call_as(other, "transactions.post", &transfer_body("pay-1", "cash", "alice", 7, "USD")).await.ok();
    assert_eq!(theirs["replayed"], false);
    assert_ne!(theirs["ledger_tx_id"], first["ledger_tx_id"]);
    cluster.finish().await;
}

#[tokio::test]
async fn a_retried_business_rejection_is_replayed_even_after_funds_arrive() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    cluster.create_account("bob", "LIABILITY", "IDR", false).await;
    let first = cluster.transfer("pay", "alice", "bob", 500, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    cluster.transfer("fund", "cash", "alice", 1_000, "IDR").await.ok();
    let again = cluster.transfer("pay", "alice", "bob", 500, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    assert_eq!(first, again);
    assert_eq!(cluster.balance("bob").await, 0);
    // a 400 consumes no key: after fixing the request, the same key posts
    let mut bad = transfer_body("fixable", "alice", "bob", 500, "IDR");
    bad["entries"][1]["amount_minor"] = json!(499);
    cluster.call("transactions.post", bad).await.err("UNBALANCED", 400);
    cluster.transfer("fixable", "alice", "bob", 500, "IDR").await.ok();
    // a 404 consumes no key either
    cluster.transfer("later", "alice", "carol", 100, "IDR").await.err("ACCOUNT_NOT_FOUND", 404);
    cluster.create_account("carol", "LIABILITY", "IDR", false).await;
    cluster.transfer("later", "alice", "carol", 100, "IDR").await.ok();
    assert_eq!(cluster.balance("alice").await, 400);
    cluster.finish().await;
}

#[tokio::test]
async fn concurrent_identical_requests_post_once() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    let asks = (0..50).map(|_| cluster.transfer("same-key", "cash", "alice", 10, "IDR"));
    let replies = futures::future::join_all(asks).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut fresh = 0;
    for reply in replies {
        let body = reply.ok();
        ids.insert(body["ledger_tx_id"].as_str().unwrap().to_owned());
        if body["replayed"] == false {
            fresh += 1;
        }
    }
    assert_eq!(ids.len(), 1, "one transaction for one key");
    assert_eq!(fresh, 1, "exactly one reply is the original");
    assert_eq!(cluster.balance("alice").await, 10);
    assert_eq!(cluster.statement("alice").await.len(), 1);
    cluster.finish().await;
}
