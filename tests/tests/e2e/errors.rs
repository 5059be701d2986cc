//! Every reachable error code of docs/PROTOCOL.md ("Replies and errors"), each triggered by a request,
//! each leaving nothing written (or, for a refusal stored under its key, that record, and
//! across shards at most compensated legs); and bad input that must neither crash nor
//! wedge the service. Runs on 1 shard and on 4 (`LEDGER_TEST_SHARDS`).

use ledger_tests::{Cluster, transfer_body};
use serde_json::{Value, json};

async fn funded(cluster: &Cluster) {
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    cluster.create_account("bob", "LIABILITY", "IDR", false).await;
    cluster.create_account("usd", "LIABILITY", "USD", false).await;
    cluster.transfer("fund", "cash", "alice", 10_000, "IDR").await.ok();
}

/// Sends `body` to `operation`, expects `code`/`status`, and checks that no table changed.
async fn refused(cluster: &Cluster, operation: &str, body: Value, code: &str, status: u16) -> Value {
    let before = cluster.footprint().await;
    let error = cluster.call(operation, body.clone()).await.err(code, status);
    assert_eq!(cluster.footprint().await, before, "{code} wrote something for {body}");
    error
}

/// What a stored refusal may change, and what it may not.
struct Written {
    footprint: Vec<i64>,
    balances: Vec<i64>,
    transactions: i64,
    compensations: i64,
}

async fn written(cluster: &Cluster) -> Written {
    let mut balances = Vec::new();
    for code in ["cash", "alice", "bob", "usd"] {
        balances.push(cluster.balance(code).await);
    }
    let (mut transactions, mut compensations) = (0, 0);
    for shard in 0..cluster.config.shards.len() {
        let db = cluster.db(shard).await;
        let (all, undone): (i64, i64) =
            sqlx::query_as("select count(*), count(*) filter (where tx_type = 'SAGA_COMPENSATION') from ledger_transaction")
                .fetch_one(&db)
                .await
                .unwrap();
        transactions += all;
        compensations += undone;
        db.close().await;
    }
    Written { footprint: cluster.footprint().await, balances, transactions, compensations }
}

async fn stored_only(cluster: &Cluster, before: &Written) {
    let after = written(cluster).await;
    // per shard, ledger_idempotency is the fourth of nine counts
    let is_key = |i: usize| i % 9 == 3;
    let keys = |w: &Written| w.footprint.iter().enumerate().filter(|(i, _)| is_key(*i)).map(|(_, c)| c).sum::<i64>();
    if cluster.config.shards.len() == 1 {
        let mut expected = before.footprint.clone();
        expected[3] += 1;
        assert_eq!(after.footprint, expected, "only the idempotency record may be written");
    } else {
        assert!(keys(&after) > keys(before), "the refusal is stored under its key");
        assert_eq!(after.balances, before.balances, "every balance where it was");
        let legs = after.transactions - before.transactions;
        let undone = after.compensations - before.compensations;
        assert_eq!(legs, 2 * undone, "every leg that posted was compensated");
    }
}

#[tokio::test]
async fn every_reachable_error_code_writes_nothing() {
    let cluster = Cluster::foundation().await;
    funded(&cluster).await;
    let post = |key: &str, from: &str, to: &str, amount: i64, currency: &str| transfer_body(key, from, to, amount, currency);

    let e = refused(&cluster, "transactions.post", json!({"idempotency_key": "k"}), "INVALID_REQUEST", 400).await;
    assert_eq!(e["details"]["field"], "type");
    let e = refused(&cluster, "transactions.post", post("k1", "alice", "bob", 5, "XTS"), "UNKNOWN_CURRENCY", 400).await;
    assert_eq!(e["details"]["field"], "entries[0].currency");
    let mut unbalanced = post("k2", "alice", "bob", 5, "IDR");
    unbalanced["entries"][1]["amount_minor"] = json!(4);
    refused(&cluster, "transactions.post", unbalanced, "UNBALANCED", 400).await;
    refused(&cluster, "transactions.post", post("k3", "alice", "usd", 5, "IDR"), "CURRENCY_MISMATCH", 400).await;
    refused(&cluster, "transactions.post", post("k4", "alice", "alice", 5, "IDR"), "DUPLICATE_ACCOUNT", 400).await;
    refused(&cluster, "transactions.post", post("k5", "alice", "nobody", 5, "IDR"), "ACCOUNT_NOT_FOUND", 404).await;
    refused(&cluster, "accounts.get", json!({"account_code": "nobody"}), "ACCOUNT_NOT_FOUND", 404).await;
    refused(&cluster, "accounts.statement", json!({"account_code": "nobody"}), "ACCOUNT_NOT_FOUND", 404).await;
    refused(
        &cluster,
        "transactions.get",
        json!({"ledger_tx_id": "01a2017e-ed06-7000-be0a-bd9b3afb200a"}),
        "TRANSACTION_NOT_FOUND",
        404,
    )
    .await;
    refused(&cluster, "transactions.get", json!({"idempotency_key": "never"}), "TRANSACTION_NOT_FOUND", 404).await;
    refused(
        &cluster,
        "transactions.reverse",
        json!({"idempotency_key": "r0", "ledger_tx_id": "01a2017e-ed06-7000-be0a-bd9b3afb200a", "actor": "ops", "reason_code": "X"}),
        "TRANSACTION_NOT_FOUND",
        404,
    )
    .await;
    refused(&cluster, "accounts.create", json!({"code": "alice", "type": "ASSET", "currency": "IDR"}), "ACCOUNT_EXISTS", 409)
        .await;
    let big = format!(r#"{{"code":"x","type":"ASSET","currency":"IDR","metadata":{{"pad":"{}"}}}}"#, "x".repeat(70 * 1024));
    let before = cluster.footprint().await;
    cluster.raw(&format!("ledger.v1.{}.accounts.create", cluster.tenant), big.into_bytes()).await.err("TOO_LARGE", 413);
    assert_eq!(cluster.footprint().await, before);

    // Business rejections that are remembered under the key write exactly that record (on
    // one shard), or, across shards, at most saga bookkeeping: legs that posted before the
    // refusal, each with its compensation, and every balance where it was.
    let before = written(&cluster).await;
    cluster.transfer("k6", "alice", "bob", 10_001, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    stored_only(&cluster, &before).await;

    let posted = cluster.transfer("k7", "alice", "bob", 100, "IDR").await.ok();
    let with_ref = |key: &str| {
        let mut body = post(key, "alice", "bob", 1, "IDR");
        body["external_ref"] = json!({"type": "psp", "ref": "ch_1"});
        body
    };
    let first_ref = cluster.call("transactions.post", with_ref("k8")).await.ok();
    let before = written(&cluster).await;
    let e = cluster.call("transactions.post", with_ref("k9")).await.err("DUPLICATE_EXTERNAL_REF", 409);
    assert_eq!(e["details"]["ledger_tx_id"], first_ref["ledger_tx_id"]);
    stored_only(&cluster, &before).await;

    let before = cluster.footprint().await;
    cluster.transfer("k7", "alice", "bob", 999, "IDR").await.err("IDEMPOTENCY_CONFLICT", 409);
    assert_eq!(cluster.footprint().await, before);

    let reverse =
        |key: &str| json!({"idempotency_key": key, "ledger_tx_id": posted["ledger_tx_id"], "actor": "ops", "reason_code": "DUP"});
    let reversal = cluster.call("transactions.reverse", reverse("r1")).await.ok();
    let before = written(&cluster).await;
    let e = cluster.call("transactions.reverse", reverse("r2")).await.err("ALREADY_REVERSED", 409);
    assert_eq!(e["details"]["reversal_tx_id"], reversal["ledger_tx_id"]);
    stored_only(&cluster, &before).await;

    let status = |code: &str, status: &str| json!({"account_code": code, "status": status, "actor": "ops", "reason_code": "KYC"});
    cluster.call("accounts.set_status", status("alice", "FROZEN")).await.ok();
    let before = written(&cluster).await;
    cluster.transfer("k10", "alice", "bob", 1, "IDR").await.err("ACCOUNT_FROZEN", 422);
    stored_only(&cluster, &before).await;

    refused(&cluster, "accounts.set_status", status("alice", "CLOSED"), "ACCOUNT_BALANCE_NONZERO", 422).await;
    cluster.create_account("empty", "LIABILITY", "IDR", false).await;
    cluster.call("accounts.set_status", status("empty", "CLOSED")).await.ok();
    let before = written(&cluster).await;
    cluster.transfer("k11", "cash", "empty", 1, "IDR").await.err("ACCOUNT_CLOSED", 422);
    stored_only(&cluster, &before).await;
    refused(&cluster, "accounts.set_status", status("empty", "ACTIVE"), "ACCOUNT_CLOSED", 422).await;
    cluster.finish().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_the_service_keeps_serving() {
    let cluster = Cluster::foundation().await;
    funded(&cluster).await;
    let base = transfer_body("bad", "alice", "bob", 5, "IDR");
    let with = |path: &[&str], value: Value| {
        let mut body = base.clone();
        let mut target = &mut body;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                target[*key] = value.clone();
            } else if let Ok(index) = key.parse::<usize>() {
                target = &mut target[index];
            } else {
                target = &mut target[*key];
            }
        }
        body
    };
    let entries = |n: usize| {
        let list: Vec<Value> = (0..n)
            .map(|i| json!({"account_code": format!("a{i}"), "side": if i % 2 == 0 {"DEBIT"} else {"CREDIT"}, "amount_minor": 1, "currency": "IDR"}))
            .collect();
        with(&["entries"], json!(list))
    };
    let mut overflow = base.clone();
    overflow["entries"] = json!([
        {"account_code": "alice", "side": "DEBIT", "amount_minor": i64::MAX, "currency": "IDR"},
        {"account_code": "cash", "side": "DEBIT", "amount_minor": 1, "currency": "IDR"},
        {"account_code": "bob", "side": "CREDIT", "amount_minor": i64::MAX, "currency": "IDR"},
    ]);
    let deep_field = format!("metadata{}", ".n".repeat(32));
    let cases: Vec<(Vec<u8>, &str, u16, Option<&str>)> = vec![
        (b"{not json".to_vec(), "INVALID_REQUEST", 400, Some("body")),
        (b"[1,2]".to_vec(), "INVALID_REQUEST", 400, None),
        (b"".to_vec(), "INVALID_REQUEST", 400, None),
        (
            with(&["entries", "0", "amount_minor"], json!(5.5)).to_string().into_bytes(),
            "INVALID_REQUEST",
            400,
            Some("entries[0].amount_minor"),
        ),
        (
            with(&["entries", "0", "amount_minor"], json!("5")).to_string().into_bytes(),
            "INVALID_REQUEST",
            400,
            Some("entries[0].amount_minor"),
        ),
        (
            with(&["entries", "0", "amount_minor"], json!(0)).to_string().into_bytes(),
            "INVALID_REQUEST",
            400,
            Some("entries[0].amount_minor"),
        ),
        (
            with(&["entries", "1", "amount_minor"], json!(-5)).to_string().into_bytes(),
            "INVALID_REQUEST",
            400,
            Some("entries[1].amount_minor"),
        ),
        (with(&["actor"], json!(7)).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("actor")),
        (with(&["surprise"], json!(true)).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("surprise")),
        (with(&["entries", "0", "memo"], json!("x")).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("entries[0].memo")),
        (overflow.to_string().into_bytes(), "INVALID_REQUEST", 400, Some("entries")),
        (entries(1).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("entries")),
        (entries(130).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("entries")),
        (with(&["idempotency_key"], json!("")).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("idempotency_key")),
        (with(&["type"], json!("lower case")).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("type")),
        (with(&["occurred_at"], json!("yesterday")).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("occurred_at")),
        (with(&["entries", "0", "currency"], json!("ABC")).to_string().into_bytes(), "UNKNOWN_CURRENCY", 400, None),
        (with(&["entries", "0", "currency"], json!("USD")).to_string().into_bytes(), "UNBALANCED", 400, None),
        (with(&["entries", "1", "account_code"], json!("alice")).to_string().into_bytes(), "DUPLICATE_ACCOUNT", 400, None),
        (with(&["entries", "1", "account_code"], json!("usd")).to_string().into_bytes(), "CURRENCY_MISMATCH", 400, None),
        (format!(r#"{{"pad":"{}"}}"#, "x".repeat(65 * 1024)).into_bytes(), "TOO_LARGE", 413, None),
        // PostgreSQL cannot store U+0000 in jsonb: refused here, never a failed batch
        (with(&["metadata"], json!({"note": "a\u{0}b"})).to_string().into_bytes(), "INVALID_REQUEST", 400, Some("metadata.note")),
        (
            with(&["metadata"], (1..40).fold(json!({}), |inner, _| json!({"n": inner}))).to_string().into_bytes(),
            "INVALID_REQUEST",
            400,
            Some(deep_field.as_str()),
        ),
    ];
    let subject = format!("ledger.v1.{}.transactions.post", cluster.tenant);
    let before = cluster.footprint().await;
    for (payload, code, status, field) in cases {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(120)]).into_owned();
        let reply = cluster.raw(&subject, payload).await;
        assert_eq!(reply.code(), Some(code), "{shown} -> {}", reply.body);
        let error = reply.err(code, status);
        if let Some(field) = field {
            assert_eq!(error["details"]["field"], field, "{shown}");
        }
    }
    assert_eq!(cluster.footprint().await, before, "no refused request wrote anything");

    let upper = format!("ledger.v1.{}.accounts.get", cluster.tenant.to_string().to_uppercase());
    cluster.raw(&upper, br#"{"account_code":"alice"}"#.to_vec()).await.err("INVALID_REQUEST", 400);
    cluster
        .call("accounts.get", json!({"account_code": "alice", "account_id": "00000000-0000-0000-0000-000000000000"}))
        .await
        .err("INVALID_REQUEST", 400);
    cluster.call("accounts.statement", json!({"account_code": "alice", "limit": 0})).await.err("INVALID_REQUEST", 400);
    cluster.call("accounts.statement", json!({"account_code": "alice", "limit": 1001})).await.err("INVALID_REQUEST", 400);
    cluster
        .call("accounts.create", json!({"code": "bad code", "type": "ASSET", "currency": "IDR"}))
        .await
        .err("INVALID_REQUEST", 400);
    cluster.call("accounts.create", json!({"code": "ok", "type": "CASH", "currency": "IDR"})).await.err("INVALID_REQUEST", 400);

    // the next valid request succeeds
    let posted = cluster.transfer("good", "alice", "bob", 5, "IDR").await.ok();
    assert_eq!(posted["status"], "POSTED");
    assert_eq!(cluster.balance("bob").await, 5);
    cluster.finish().await;
}

#[tokio::test]
async fn tenants_cannot_see_or_move_each_others_accounts() {
    let cluster = Cluster::foundation().await;
    funded(&cluster).await;
    let other = uuid::Uuid::new_v4();
    let alice_id = ledger_core::ids::account_id(cluster.tenant, "alice");
    cluster.call_as(other, "accounts.get", &json!({"account_id": alice_id})).await.err("ACCOUNT_NOT_FOUND", 404);
    let mut steal = transfer_body("steal", "x", "y", 1, "IDR");
    steal["entries"][0] = json!({"account_id": alice_id, "side": "DEBIT", "amount_minor": 1, "currency": "IDR"});
    cluster.call_as(other, "accounts.create", &json!({"code": "y", "type": "LIABILITY", "currency": "IDR"})).await.ok();
    steal["entries"][1] = json!({"account_code": "y", "side": "CREDIT", "amount_minor": 1, "currency": "IDR"});
    cluster.call_as(other, "transactions.post", &steal).await.err("ACCOUNT_NOT_FOUND", 404);
    cluster.call_as(other, "transactions.get", &json!({"idempotency_key": "fund"})).await.err("TRANSACTION_NOT_FOUND", 404);
    assert_eq!(cluster.balance("alice").await, 10_000);
    cluster.finish().await;
}
