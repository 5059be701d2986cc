//! Reversals mirror, happen at most once, and statements reproduce balances.

use ledger_tests::Cluster;
use serde_json::json;

#[tokio::test]
async fn reversal_mirrors_once_and_statements_walk_to_the_balance() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "JPY", false).await;
    cluster.create_account("alice", "LIABILITY", "JPY", false).await;
    cluster.create_account("shop", "LIABILITY", "JPY", false).await;
    cluster.transfer("fund", "cash", "alice", 10_000, "JPY").await.ok();
    let mut paid = Vec::new();
    for i in 0..12 {
        paid.push(cluster.transfer(&format!("pay-{i}"), "alice", "shop", 100 + i, "JPY").await.ok());
    }
    let original = &paid[3];
    let reverse = json!({"idempotency_key": "rev-3", "ledger_tx_id": original["ledger_tx_id"], "actor": "ops:alice", "reason_code": "DUPLICATE"});
    let reversal = cluster.call("transactions.reverse", reverse.clone()).await.ok();
    assert_eq!(reversal["status"], "POSTED");
    let mirrored: Vec<_> = original["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["account_id"].clone(), if e["side"] == "DEBIT" { "CREDIT" } else { "DEBIT" }, e["amount_minor"].clone()))
        .collect();
    let got: Vec<_> = reversal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["account_id"].clone(), e["side"].as_str().unwrap(), e["amount_minor"].clone()))
        .collect();
    assert_eq!(got, mirrored);

    let reversed = cluster.call("transactions.get", json!({"ledger_tx_id": original["ledger_tx_id"]})).await.ok();
    assert_eq!(reversed["status"], "REVERSED");
    assert_eq!(reversed["reversed_by_ledger_tx_id"], reversal["ledger_tx_id"]);
    let fetched = cluster.call("transactions.get", json!({"ledger_tx_id": reversal["ledger_tx_id"]})).await.ok();
    assert_eq!(fetched["type"], "REVERSAL");
    assert_eq!(fetched["reverses_ledger_tx_id"], original["ledger_tx_id"]);
    assert_eq!(fetched["reason_code"], "DUPLICATE");
    assert_eq!(fetched["actor"], "ops:alice");

    // same key replays; a new key is refused: at most once
    assert_eq!(cluster.call("transactions.reverse", reverse).await.ok()["replayed"], true);
    let again = json!({"idempotency_key": "rev-3b", "ledger_tx_id": original["ledger_tx_id"], "actor": "ops", "reason_code": "DUPLICATE"});
    cluster.call("transactions.reverse", again).await.err("ALREADY_REVERSED", 409);
    // a reversal is not itself reversible
    let of_reversal =
        json!({"idempotency_key": "rev-rev", "ledger_tx_id": reversal["ledger_tx_id"], "actor": "ops", "reason_code": "X"});
    cluster.call("transactions.reverse", of_reversal).await.err("INVALID_REQUEST", 400);

    // a frozen account still takes the reversal of a payment out of it
    let status = |s: &str| json!({"account_code": "alice", "status": s, "actor": "ops", "reason_code": "KYC"});
    cluster.call("accounts.set_status", status("FROZEN")).await.ok();
    let rev =
        json!({"idempotency_key": "rev-5", "ledger_tx_id": paid[5]["ledger_tx_id"], "actor": "ops", "reason_code": "REFUND"});
    cluster.call("transactions.reverse", rev).await.ok();
    cluster.call("accounts.set_status", status("ACTIVE")).await.ok();

    for code in ["alice", "shop", "cash"] {
        let account = cluster.call("accounts.get", json!({"account_code": code})).await.ok();
        let statement = cluster.statement(code).await;
        assert_eq!(statement.len() as i64, account["balance"]["version"].as_i64().unwrap(), "{code}: version counts entries");
        let normal_debit = account["type"] == "ASSET";
        let mut running = 0i64;
        for entry in &statement {
            let amount = entry["amount_minor"].as_i64().unwrap();
            let debit = entry["side"] == "DEBIT";
            running += if debit == normal_debit { amount } else { -amount };
            assert_eq!(entry["balance_after_minor"].as_i64().unwrap(), running, "{code}: balance_after at every step");
        }
        assert_eq!(running, account["balance"]["balance_minor"].as_i64().unwrap(), "{code}: walk ends at the balance");
    }
    let spent: i64 = (0..12).map(|i| 100 + i).sum::<i64>() - 103 - 105;
    assert_eq!(cluster.balance("shop").await, spent);
    assert_eq!(cluster.balance("alice").await, 10_000 - spent);

    // statement paging and time windows
    let page = cluster.call("accounts.statement", json!({"account_code": "alice", "limit": 5})).await.ok();
    assert_eq!(page["entries"].as_array().unwrap().len(), 5);
    let next = cluster
        .call("accounts.statement", json!({"account_code": "alice", "limit": 5, "cursor": page["next_cursor"]}))
        .await
        .ok();
    assert_ne!(next["entries"][0]["ledger_entry_id"], page["entries"][4]["ledger_entry_id"]);
    let future = cluster.call("accounts.statement", json!({"account_code": "alice", "from": "2999-01-01T00:00:00Z"})).await.ok();
    assert_eq!(future["entries"].as_array().unwrap().len(), 0);
    assert!(future["next_cursor"].is_null());
    cluster.finish().await;
}

#[tokio::test]
async fn reversal_obeys_allow_negative_and_closed() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    cluster.create_account("bob", "LIABILITY", "IDR", false).await;
    let fund = cluster.transfer("fund", "cash", "alice", 1_000, "IDR").await.ok();
    cluster.transfer("spend", "alice", "bob", 1_000, "IDR").await.ok();
    // reversing the funding would take alice below zero
    let rev = json!({"idempotency_key": "rev-fund", "ledger_tx_id": fund["ledger_tx_id"], "actor": "ops", "reason_code": "X"});
    let before = cluster.balance("alice").await;
    cluster.call("transactions.reverse", rev).await.err("INSUFFICIENT_FUNDS", 422);
    assert_eq!(cluster.balance("alice").await, before);
    cluster.finish().await;
}
