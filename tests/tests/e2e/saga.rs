//! Cross-shard transactions (sagas) on a 4-shard cluster: whole or not at all, one id and
//! one reply, compensations that put every balance back, reversals of cross-shard
//! transactions, duplicate step messages, and the audit.

use ledger_core::command::Command;
use ledger_core::ids::{IdSource, RandomIds, is_saga_id};
use ledger_core::money::Side;
use ledger_core::saga::{LegEntry, LegHeader, PlannedStep, StepAction, StepPhase};
use ledger_protocol::internal::{ShardReply, ShardRequest};
use ledger_tests::{Cluster, transfer_body};
use serde_json::{Value, json};

/// Accounts on shards 1, 2 and 3, funded from a cash account on each shard.
struct Setup {
    cluster: Cluster,
    /// alice on shard 1 (1,000), bob on shard 2 (0), carol and dave on shard 3 (1,000 and 50)
    alice: String,
    bob: String,
    carol: String,
    dave: String,
}

async fn setup() -> Setup {
    let cluster = Cluster::start(4).await;
    let alice = cluster.codes_on(1, "alice", 1).remove(0);
    let bob = cluster.codes_on(2, "bob", 1).remove(0);
    let mut on_3 = cluster.codes_on(3, "user", 2);
    let (carol, dave) = (on_3.remove(0), on_3.remove(0));
    for (shard, holder, amount) in [(1, &alice, 1_000), (3, &carol, 1_000), (3, &dave, 50)] {
        let cash = cluster.codes_on(shard, "cash", 1).remove(0);
        cluster.create_account(&cash, "ASSET", "IDR", true).await;
        cluster.create_account(holder, "LIABILITY", "IDR", false).await;
        cluster.transfer(&format!("fund-{holder}"), &cash, holder, amount, "IDR").await.ok();
    }
    cluster.create_account(&bob, "LIABILITY", "IDR", false).await;
    Setup { cluster, alice, bob, carol, dave }
}

fn entries_body(key: &str, entries: &[(&str, &str, i64)]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|(code, side, amount)| json!({"account_code": code, "side": side, "amount_minor": amount, "currency": "IDR"}))
        .collect();
    json!({"idempotency_key": key, "type": "TRANSFER", "actor": "test", "entries": entries})
}

#[track_caller]
fn assert_audit_ok(audit: &Value) {
    assert_eq!(audit["ok"], true, "audit: {audit:#}");
    assert_eq!(audit["cluster"]["sagas_in_flight"], 0);
}

#[tokio::test]
async fn a_cross_shard_transfer_posts_whole_under_one_id_and_replays() {
    let Setup { cluster, alice, bob, .. } = setup().await;
    let mut body = transfer_body("pay-1", &alice, &bob, 300, "IDR");
    body["external_ref"] = json!({"type": "psp", "ref": "ch_1"});
    let posted = cluster.call("transactions.post", body.clone()).await.ok();
    let id: uuid::Uuid = posted["ledger_tx_id"].as_str().unwrap().parse().unwrap();
    assert!(is_saga_id(id));
    assert_eq!(posted["status"], "POSTED");
    assert_eq!(posted["replayed"], false);
    let entries = posted["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "the client's entries only: {posted}");
    assert_eq!((entries[0]["entry_seq"].as_i64(), entries[0]["balance_after_minor"].as_i64()), (Some(1), Some(700)));
    assert_eq!((entries[1]["entry_seq"].as_i64(), entries[1]["balance_after_minor"].as_i64()), (Some(2), Some(300)));
    assert_eq!((cluster.balance(&alice).await, cluster.balance(&bob).await), (700, 300));

    let mut replay = cluster.call("transactions.post", body).await.ok();
    assert_eq!(replay["replayed"], true);
    replay["replayed"] = json!(false);
    assert_eq!(replay, posted, "the replay is the same reply");
    assert_eq!((cluster.balance(&alice).await, cluster.balance(&bob).await), (700, 300));

    // one transaction, however it is looked up
    for lookup in [
        json!({"ledger_tx_id": id}),
        json!({"idempotency_key": "pay-1"}),
        json!({"external_ref": {"type": "psp", "ref": "ch_1"}}),
    ] {
        let tx = cluster.call("transactions.get", lookup).await.ok();
        assert_eq!(tx["ledger_tx_id"], json!(id));
        assert_eq!(tx["status"], "POSTED");
        assert_eq!(tx["entries"].as_array().unwrap().len(), 2);
        assert_eq!(tx["external_ref"]["ref"], "ch_1");
    }
    // the reference is taken across the cluster, also for a single-shard request
    let cash = cluster.codes_on(1, "cash", 1).remove(0);
    let mut dup = transfer_body("pay-2", &cash, &alice, 5, "IDR");
    dup["external_ref"] = json!({"type": "psp", "ref": "ch_1"});
    let error = cluster.call("transactions.post", dup).await.err("DUPLICATE_EXTERNAL_REF", 409);
    assert_eq!(error["details"]["ledger_tx_id"], json!(id));
    // statements on both shards show the transaction under its one id
    assert_eq!(cluster.statement(&alice).await.last().unwrap()["ledger_tx_id"], json!(id));
    assert_eq!(cluster.statement(&bob).await.last().unwrap()["ledger_tx_id"], json!(id));
    assert_audit_ok(&cluster.audit().await);
    cluster.finish().await;
}

#[tokio::test]
async fn a_refused_leg_is_compensated_and_every_balance_returns_exactly() {
    let Setup { cluster, alice, bob, carol, dave } = setup().await;
    // bob is closed; carol is frozen; dave has 50
    let closed = cluster.codes_on(2, "closed", 1).remove(0);
    cluster.create_account(&closed, "LIABILITY", "IDR", false).await;
    cluster.call("accounts.set_status", json!({"account_code": closed, "status": "CLOSED", "actor": "ops"})).await.ok();
    cluster.call("accounts.set_status", json!({"account_code": carol, "status": "FROZEN", "actor": "ops"})).await.ok();
    let before: Vec<i64> = futures::future::join_all([&alice, &bob, &carol, &dave].map(|c| cluster.balance(c))).await;

    let cases = [
        // the crediting leg comes after the debit: the debit is posted, then undone
        ("to-closed", entries_body("to-closed", &[(&alice, "DEBIT", 100), (&closed, "CREDIT", 100)]), "ACCOUNT_CLOSED", 1),
        // two debiting legs in request order: alice's posts, carol's is refused
        (
            "from-frozen",
            entries_body("from-frozen", &[(&alice, "DEBIT", 100), (&carol, "DEBIT", 100), (&bob, "CREDIT", 200)]),
            "ACCOUNT_FROZEN",
            1,
        ),
        (
            "short",
            entries_body("short", &[(&alice, "DEBIT", 100), (&dave, "DEBIT", 100), (&bob, "CREDIT", 200)]),
            "INSUFFICIENT_FUNDS",
            1,
        ),
    ];
    for (key, body, code, failed_step) in cases {
        let error = cluster.call("transactions.post", body.clone()).await.err(code, 422);
        let saga = &error["details"]["saga"];
        assert_eq!(saga["failed_leg"]["step"], failed_step, "{error}");
        let compensations = saga["compensations"].as_array().unwrap();
        assert_eq!(compensations.len(), 1, "alice's leg was undone: {error}");
        assert_eq!(compensations[0]["shard"], 1);
        // a retry gets the same refusal and posts nothing
        let again = cluster.call("transactions.post", body).await.err(code, 422);
        assert_eq!(again, error, "{key}: the refusal is stored under the key");
    }
    let after: Vec<i64> = futures::future::join_all([&alice, &bob, &carol, &dave].map(|c| cluster.balance(c))).await;
    assert_eq!(after, before, "every balance is back where it was");
    // alice's statement shows each leg and its compensation, and walks to her balance
    let statement = cluster.statement(&alice).await;
    let types: Vec<&str> = statement.iter().map(|e| e["tx_type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["TRANSFER", "TRANSFER", "SAGA_COMPENSATION", "TRANSFER", "SAGA_COMPENSATION", "TRANSFER", "SAGA_COMPENSATION"]
    );
    assert_eq!(statement.last().unwrap()["balance_after_minor"], 1_000);
    assert!(statement.iter().skip(1).step_by(2).all(|e| is_saga_id(e["ledger_tx_id"].as_str().unwrap().parse().unwrap())));
    assert_audit_ok(&cluster.audit().await);
    cluster.finish().await;
}

#[tokio::test]
async fn bad_cross_shard_requests_write_nothing() {
    let Setup { cluster, alice, bob, .. } = setup().await;
    let usd = cluster.codes_on(2, "usd", 1).remove(0);
    cluster.create_account(&usd, "LIABILITY", "USD", false).await;
    let before = cluster.footprint().await;
    let missing = cluster.codes_on(2, "nobody", 1).remove(0);
    cluster.transfer("p1", &alice, &missing, 10, "IDR").await.err("ACCOUNT_NOT_FOUND", 404);
    cluster.transfer("p2", &alice, &usd, 10, "IDR").await.err("CURRENCY_MISMATCH", 400);
    assert_eq!(cluster.footprint().await, before, "nothing written, no key consumed");
    // the same keys are free for a corrected request
    cluster.transfer("p1", &alice, &bob, 10, "IDR").await.ok();
    cluster.finish().await;
}

#[tokio::test]
async fn a_cross_shard_transaction_is_reversed_once_leg_by_leg() {
    let Setup { cluster, alice, bob, .. } = setup().await;
    let posted = cluster.transfer("pay", &alice, &bob, 400, "IDR").await.ok();
    let id = posted["ledger_tx_id"].clone();
    let reverse = json!({"idempotency_key": "undo", "ledger_tx_id": id, "actor": "ops", "reason_code": "DUPLICATE"});
    let reversal = cluster.call("transactions.reverse", reverse.clone()).await.ok();
    assert!(is_saga_id(reversal["ledger_tx_id"].as_str().unwrap().parse().unwrap()));
    let sides: Vec<(&str, i64)> = reversal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["side"].as_str().unwrap(), e["entry_seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(sides, [("CREDIT", 1), ("DEBIT", 2)], "mirrors the original: {reversal}");
    assert_eq!((cluster.balance(&alice).await, cluster.balance(&bob).await), (1_000, 0));
    let mut replay = cluster.call("transactions.reverse", reverse).await.ok();
    replay["replayed"] = json!(false);
    assert_eq!(replay, reversal);

    let original = cluster.call("transactions.get", json!({"ledger_tx_id": id})).await.ok();
    assert_eq!(original["status"], "REVERSED");
    assert_eq!(original["reversed_by_ledger_tx_id"], reversal["ledger_tx_id"]);
    let got = cluster.call("transactions.get", json!({"ledger_tx_id": reversal["ledger_tx_id"]})).await.ok();
    assert_eq!(got["type"], "REVERSAL");
    assert_eq!(got["reverses_ledger_tx_id"], id);
    let again = json!({"idempotency_key": "undo-2", "ledger_tx_id": id, "actor": "ops", "reason_code": "DUPLICATE"});
    let error = cluster.call("transactions.reverse", again).await.err("ALREADY_REVERSED", 409);
    assert_eq!(error["details"]["reversal_tx_id"], reversal["ledger_tx_id"]);
    assert_eq!((cluster.balance(&alice).await, cluster.balance(&bob).await), (1_000, 0));
    assert_audit_ok(&cluster.audit().await);
    cluster.finish().await;
}

#[tokio::test]
async fn a_reversal_refused_on_a_leg_is_undone_and_can_be_tried_again() {
    let Setup { cluster, alice, bob, .. } = setup().await;
    let posted = cluster.transfer("pay", &alice, &bob, 400, "IDR").await.ok();
    // bob spends the money: the reversal's debit of bob would go below zero
    let sink = cluster.codes_on(2, "sink", 1).remove(0);
    cluster.create_account(&sink, "LIABILITY", "IDR", false).await;
    cluster.transfer("spend", &bob, &sink, 300, "IDR").await.ok();
    let reverse = json!({"idempotency_key": "undo", "ledger_tx_id": posted["ledger_tx_id"], "actor": "ops", "reason_code": "X"});
    cluster.call("transactions.reverse", reverse).await.err("INSUFFICIENT_FUNDS", 422);
    assert_eq!((cluster.balance(&alice).await, cluster.balance(&bob).await), (600, 100));
    let original = cluster.call("transactions.get", json!({"ledger_tx_id": posted["ledger_tx_id"]})).await.ok();
    assert_eq!(original["status"], "POSTED", "a reversal that turned back releases its claim");
    // once bob has the money again, a new reversal goes through
    cluster.transfer("back", &sink, &bob, 300, "IDR").await.ok();
    let retry = json!({"idempotency_key": "undo-2", "ledger_tx_id": posted["ledger_tx_id"], "actor": "ops", "reason_code": "X"});
    cluster.call("transactions.reverse", retry).await.ok();
    assert_eq!((cluster.balance(&alice).await, cluster.balance(&bob).await), (1_000, 0));
    assert_audit_ok(&cluster.audit().await);
    cluster.finish().await;
}

/// A saga step as a coordinator sends it: one entry of `code` plus the clearing entry.
fn step_command(
    cluster: &Cluster,
    saga_id: uuid::Uuid,
    phase: StepPhase,
    hold: bool,
    code: &str,
    side: Side,
    amount_minor: i64,
) -> Command {
    let entry = ledger_core::command::EntryCommand {
        account_id: ledger_core::ids::account_id(cluster.tenant, code),
        side,
        amount_minor,
        currency: ledger_core::currency::Currency::parse("IDR").unwrap(),
    };
    // the plan a coordinator sends with it: this leg and one elsewhere that balances it,
    // after it when it is held (every leg but a saga's last is), else before it
    let shard = cluster.config.ring().shard_for_account(entry.account_id);
    let action = StepAction::Post { entries: vec![LegEntry { seq: 1, entry: entry.clone() }] };
    let counter = ledger_core::command::EntryCommand { account_id: uuid::Uuid::new_v4(), side: side.opposite(), ..entry };
    let elsewhere =
        PlannedStep { shard: shard + 1, action: StepAction::Post { entries: vec![LegEntry { seq: 2, entry: counter }] } };
    let this = PlannedStep { shard, action: action.clone() };
    let (step, plan) = if hold { (0, vec![this, elsewhere]) } else { (1, vec![elsewhere, this]) };
    Command::SagaStep(Box::new(ledger_core::command::SagaStepCommand {
        tenant_id: cluster.tenant,
        saga_id,
        step,
        phase,
        hold,
        action,
        header: LegHeader {
            tx_type: "TRANSFER".into(),
            actor: "test".into(),
            reason_code: None,
            business_ref: None,
            external_ref: None,
            occurred_at: None,
            metadata: json!({}),
            entry_count: 2,
        },
        plan: if phase == StepPhase::Forward { plan } else { Vec::new() },
    }))
}

async fn write_to_shard(cluster: &Cluster, shard: u16, command: Command) -> ShardReply {
    cluster.to_shard(shard, &ShardRequest::Write { command: Box::new(command) }).await
}

#[tokio::test]
async fn a_held_leg_cannot_be_spent_or_closed_and_is_undone_or_released_once() {
    let Setup { cluster, bob, dave, .. } = setup().await;
    let mut ids = RandomIds::default();
    // two held legs, as every leg but a saga's last is posted: 300 into bob (who has
    // nothing else), all of dave's 50 out of dave
    let into_bob = ids.saga_id(chrono::Utc::now(), 0);
    let bob_leg = |phase| step_command(&cluster, into_bob, phase, true, &bob, Side::Credit, 300);
    assert_eq!(write_to_shard(&cluster, 2, bob_leg(StepPhase::Forward)).await.status(), 200);
    let out_of_dave = ids.saga_id(chrono::Utc::now(), 0);
    let dave_leg = |phase| step_command(&cluster, out_of_dave, phase, true, &dave, Side::Debit, 50);
    assert_eq!(write_to_shard(&cluster, 3, dave_leg(StepPhase::Forward)).await.status(), 200);

    let account = cluster.call("accounts.get", json!({"account_code": bob})).await.ok();
    assert_eq!((account["balance"]["balance_minor"].as_i64(), account["balance"]["held_minor"].as_i64()), (Some(300), Some(300)));
    let sink = cluster.codes_on(2, "sink", 1).remove(0);
    cluster.create_account(&sink, "LIABILITY", "IDR", false).await;
    let error = cluster.transfer("spend", &bob, &sink, 1, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    assert_eq!(error["details"]["held_minor"], 300, "{error}");
    let close = json!({"account_code": dave, "status": "CLOSED", "actor": "ops"});
    cluster.call("accounts.set_status", close.clone()).await.err("IN_PROGRESS", 409);
    let audit = cluster.audit().await;
    assert_eq!((audit["ok"].clone(), audit["cluster"]["held_legs"].clone()), (json!(false), json!(2)), "{audit:#}");

    // bob's leg is undone (its saga turned back), dave's released (its saga posted); twice each
    for _ in 0..2 {
        assert_eq!(write_to_shard(&cluster, 2, bob_leg(StepPhase::Undo)).await.status(), 200);
        assert_eq!(write_to_shard(&cluster, 3, dave_leg(StepPhase::Release)).await.status(), 200);
    }
    let account = cluster.call("accounts.get", json!({"account_code": bob})).await.ok();
    assert_eq!((account["balance"]["balance_minor"].as_i64(), account["balance"]["held_minor"].as_i64()), (Some(0), Some(0)));
    assert_eq!(cluster.balance(&dave).await, 0);
    cluster.call("accounts.set_status", close).await.ok();
    let types: Vec<Value> = cluster.statement(&bob).await.iter().map(|e| e["tx_type"].clone()).collect();
    assert_eq!(types, [json!("TRANSFER"), json!("SAGA_COMPENSATION")], "undone once");
    let audit = cluster.audit().await;
    assert_eq!(audit["cluster"]["held_legs"], 0);
    // the clearing accounts do not net to zero: these legs belong to no saga
    assert!(audit["shards"].as_array().unwrap().iter().all(|s| s["unsettled_drift"].as_array().unwrap().is_empty()));
    cluster.finish().await;
}

#[tokio::test]
async fn a_step_delivered_twice_posts_once() {
    let Setup { cluster, alice, .. } = setup().await;
    let saga_id = RandomIds::default().saga_id(chrono::Utc::now(), 0);
    let step = step_command(&cluster, saga_id, StepPhase::Forward, false, &alice, Side::Debit, 10);
    // twice in one message (one batch), then once more on its own
    let twice = ShardRequest::WriteBatch { commands: vec![step.clone(), step.clone()] };
    let batch = cluster.to_shard(1, &twice).await;
    let ShardReply::Batch(replies) = batch else { panic!("a batch answers a batch: {batch:?}") };
    let third = cluster.to_shard(1, &ShardRequest::Write { command: Box::new(step) }).await;
    for reply in replies.iter().chain([&third]) {
        assert_eq!(reply.status(), 200, "{}", reply.client_body());
        assert_eq!(reply.ledger_tx_id(), Some(saga_id));
    }
    let db = cluster.db(1).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from ledger_transaction where ledger_tx_id = $1")
        .bind(saga_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    db.close().await;
    assert_eq!(cluster.balance(&alice).await, 990);
    cluster.finish().await;
}
