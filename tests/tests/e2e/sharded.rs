//! docs/PROTOCOL.md's promises across a 4-shard cluster: an idempotency key and an external
//! reference are unique per tenant across the cluster, whatever shards the requests touch.

use futures::StreamExt;
use ledger_core::command::{ClaimKeyCommand, ClaimRefCommand, Command, ExternalRef};
use ledger_core::ring::{HashRing, ShardId};
use ledger_protocol::internal::{ClaimAnswer, ShardReply, ShardRequest};
use ledger_protocol::request::PostRequest;
use ledger_router::external_ref_home_key;
use ledger_tests::{Cluster, transfer_body};
use serde_json::json;
use uuid::Uuid;

/// Two account codes that live on `shard`.
fn pair_on(ring: &HashRing, tenant: Uuid, shard: ShardId, tag: &str) -> (String, String) {
    let mut codes = ledger_tests::codes_on(ring, tenant, shard, tag, 2);
    let second = codes.pop().unwrap();
    (codes.pop().unwrap(), second)
}

/// A key whose home is `shard`.
fn key_homed_on(ring: &HashRing, tenant: Uuid, shard: ShardId, tag: &str) -> String {
    (0..).map(|i| format!("{tag}-{i}")).find(|key| ring.shard_for_key(tenant, key) == shard).unwrap()
}

/// A key whose home is none of `avoid`.
fn key_homed_away(ring: &HashRing, tenant: Uuid, avoid: &[ShardId], tag: &str) -> String {
    (0..).map(|i| format!("{tag}-{i}")).find(|key| !avoid.contains(&ring.shard_for_key(tenant, key))).unwrap()
}

struct Setup {
    cluster: Cluster,
    a: (String, String),
    b: (String, String),
    shard_a: ShardId,
    shard_b: ShardId,
}

async fn setup() -> Setup {
    let cluster = Cluster::start(4).await;
    let ring = cluster.config.ring();
    let (shard_a, shard_b) = (1, 2);
    let a = pair_on(&ring, cluster.tenant, shard_a, "a");
    let b = pair_on(&ring, cluster.tenant, shard_b, "b");
    for code in [&a.0, &a.1, &b.0, &b.1] {
        cluster.create_account(code, "LIABILITY", "IDR", true).await;
    }
    Setup { cluster, a, b, shard_a, shard_b }
}

async fn transactions_on(cluster: &Cluster, shard: usize) -> i64 {
    let db = cluster.db(shard).await;
    let count = sqlx::query_scalar("select count(*) from ledger_transaction").fetch_one(&db).await.unwrap();
    db.close().await;
    count
}

#[tokio::test]
async fn a_key_is_unique_across_shards() {
    let Setup { cluster, a, b, shard_a, shard_b } = setup().await;
    let ring = cluster.config.ring();
    let key = key_homed_away(&ring, cluster.tenant, &[shard_a, shard_b], "pay");

    let first = cluster.transfer(&key, &a.0, &a.1, 100, "IDR").await.ok();
    let mut replay = cluster.transfer(&key, &a.0, &a.1, 100, "IDR").await.ok();
    assert_eq!(replay["replayed"], true);
    replay["replayed"] = json!(false);
    assert_eq!(replay, first);

    // the same key, a payload on an entirely different shard: refused, nothing posted there
    let before = transactions_on(&cluster, shard_b as usize).await;
    cluster.transfer(&key, &b.0, &b.1, 100, "IDR").await.err("IDEMPOTENCY_CONFLICT", 409);
    assert_eq!(transactions_on(&cluster, shard_b as usize).await, before);
    assert_eq!(cluster.balance(&b.1).await, 0);

    // the key finds its transaction, through its home shard
    let found = cluster.call("transactions.get", json!({"idempotency_key": key})).await.ok();
    assert_eq!(found["ledger_tx_id"], first["ledger_tx_id"]);

    // concurrent retries of one key whose home is elsewhere still post once
    let key2 = key_homed_away(&ring, cluster.tenant, &[shard_a], "burst");
    let asks = (0..30).map(|_| cluster.transfer(&key2, &a.0, &a.1, 7, "IDR"));
    let replies = futures::future::join_all(asks).await;
    let ids: std::collections::BTreeSet<String> =
        replies.into_iter().map(|r| r.ok()["ledger_tx_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(cluster.balance(&a.1).await, 107);
    cluster.finish().await;
}

#[tokio::test]
async fn a_refusal_that_consumes_no_key_frees_it_everywhere() {
    let Setup { cluster, a, b, shard_a, shard_b } = setup().await;
    let ring = cluster.config.ring();
    let key = key_homed_away(&ring, cluster.tenant, &[shard_a, shard_b], "fix");
    // 404 on shard A: the key's claim on its home is released before the reply
    let missing = pair_on(&ring, cluster.tenant, shard_a, "never-created").0;
    cluster.transfer(&key, &a.0, &missing, 5, "IDR").await.err("ACCOUNT_NOT_FOUND", 404);
    let posted = cluster.transfer(&key, &b.0, &b.1, 5, "IDR").await.ok();
    assert_eq!(posted["replayed"], false);
    // a stored rejection consumes the key, across shards too
    let key = key_homed_away(&ring, cluster.tenant, &[shard_a, shard_b], "fail");
    cluster.create_account("strict", "LIABILITY", "IDR", false).await;
    let strict_shard = ring.shard_for_account(ledger_core::ids::account_id(cluster.tenant, "strict"));
    let partner = pair_on(&ring, cluster.tenant, strict_shard, "p").0;
    cluster.create_account(&partner, "LIABILITY", "IDR", true).await;
    let first = cluster.transfer(&key, "strict", &partner, 5, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    let again = cluster.transfer(&key, "strict", &partner, 5, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    assert_eq!(first, again);
    cluster.transfer(&key, &b.0, &b.1, 5, "IDR").await.err("IDEMPOTENCY_CONFLICT", 409);
    cluster.finish().await;
}

#[tokio::test]
async fn an_external_reference_is_unique_across_shards() {
    let Setup { cluster, a, b, .. } = setup().await;
    let ring = cluster.config.ring();
    let with_ref = |key: &str, from: &str, to: &str, reference: &str| {
        let mut body = transfer_body(key, from, to, 50, "IDR");
        body["external_ref"] = json!({"type": "processor_x", "ref": reference});
        body
    };
    // try several references so that their homes fall on, and off, the posting shards
    for i in 0..6 {
        let reference = format!("ch_{i}");
        let home = ring.shard_for_key(
            cluster.tenant,
            &external_ref_home_key(&ledger_core::command::ExternalRef {
                ref_type: "processor_x".into(),
                reference: reference.clone(),
            }),
        );
        let first = cluster.call("transactions.post", with_ref(&format!("first-{i}"), &a.0, &a.1, &reference)).await.ok();
        let error = cluster
            .call("transactions.post", with_ref(&format!("second-{i}"), &b.0, &b.1, &reference))
            .await
            .err("DUPLICATE_EXTERNAL_REF", 409);
        assert_eq!(error["details"]["ledger_tx_id"], first["ledger_tx_id"], "reference home {home}");
        // the refusal is stored under the second key
        cluster
            .call("transactions.post", with_ref(&format!("second-{i}"), &b.0, &b.1, &reference))
            .await
            .err("DUPLICATE_EXTERNAL_REF", 409);
        let found =
            cluster.call("transactions.get", json!({"external_ref": {"type": "processor_x", "ref": reference}})).await.ok();
        assert_eq!(found["ledger_tx_id"], first["ledger_tx_id"]);
    }
    assert_eq!(cluster.balance(&b.1).await, 0, "no duplicate posted on the other shard");
    cluster.finish().await;
}

#[tokio::test]
async fn a_reference_claimed_by_an_unfinished_request_answers_in_progress() {
    let Setup { cluster, a, b, shard_a, shard_b } = setup().await;
    let ring = cluster.config.ring();
    // a reference whose home is neither posting shard
    let reference = (0..)
        .map(|i| format!("pending-{i}"))
        .find(|r| {
            let home = ring.shard_for_key(
                cluster.tenant,
                &external_ref_home_key(&ledger_core::command::ExternalRef { ref_type: "psp".into(), reference: r.clone() }),
            );
            home != shard_a && home != shard_b
        })
        .unwrap();
    let home = ring.shard_for_key(
        cluster.tenant,
        &external_ref_home_key(&ledger_core::command::ExternalRef { ref_type: "psp".into(), reference: reference.clone() }),
    );
    // a request that claimed the reference on its home shard and then died before posting
    let claim = json!({"write": {"command": {"ClaimRef": {
        "tenant_id": cluster.tenant, "external_ref": {"type": "psp", "ref": reference}, "idempotency_key": "crashed"
    }}}});
    let answer = cluster
        .client
        .request(ledger_protocol_subject(home), serde_json::to_vec(&claim).unwrap().into())
        .await
        .expect("the home shard answers");
    let answer: ShardReply = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer, ShardReply::Claim(ClaimAnswer::Claimed), "{answer:?}");

    let mut body = transfer_body("second", &b.0, &b.1, 5, "IDR");
    body["external_ref"] = json!({"type": "psp", "ref": reference});
    cluster.call("transactions.post", body.clone()).await.err("IN_PROGRESS", 409);
    // IN_PROGRESS consumes no key: the same key posts once the payload no longer names the reference
    cluster.transfer("second", &b.0, &b.1, 5, "IDR").await.ok();
    // and the crashed request, retried with its key, finishes and holds the reference
    let mut crashed = transfer_body("crashed", &a.0, &a.1, 5, "IDR");
    crashed["external_ref"] = json!({"type": "psp", "ref": reference});
    let posted = cluster.call("transactions.post", crashed).await.ok();
    let found = cluster.call("transactions.get", json!({"external_ref": {"type": "psp", "ref": reference}})).await.ok();
    assert_eq!(found["ledger_tx_id"], posted["ledger_tx_id"]);
    cluster.finish().await;
}

/// A router that claimed a key (and a reference) on their home shards and died before the
/// request was decided, and one that died after the post but before it recorded the
/// outcome: the claim sweeper settles both. The first request is abandoned where it would
/// have been decided, so that neither a retry nor a late copy of it can post; the second
/// keeps its outcome; the reference is free again.
#[tokio::test]
async fn claims_of_requests_whose_router_died_are_settled_by_the_sweeper() {
    let cluster = Cluster::start_tuned(4, |toml| {
        toml.replace("request_timeout_ms = 5000", "request_timeout_ms = 1000\nclaim_abandon_after_ms = 1500")
    })
    .await;
    let ring = cluster.config.ring();
    let target: ShardId = 1;
    let (from, to) = pair_on(&ring, cluster.tenant, target, "a");
    for code in [&from, &to] {
        cluster.create_account(code, "LIABILITY", "IDR", true).await;
    }
    let reference = (0..)
        .map(|i| ExternalRef { ref_type: "psp".into(), reference: format!("lost-{i}") })
        .find(|r| ring.shard_for_key(cluster.tenant, &external_ref_home_key(r)) != target)
        .unwrap();
    let reference_home = ring.shard_for_key(cluster.tenant, &external_ref_home_key(&reference));
    let command_of = |body: &serde_json::Value| {
        let request: PostRequest = ledger_protocol::request::parse(&serde_json::to_vec(body).unwrap()).unwrap();
        request.into_command(cluster.tenant).unwrap()
    };
    let write = |shard: ShardId, command: Command| {
        let request = ShardRequest::Write { command: Box::new(command) };
        let client = cluster.client.clone();
        async move {
            let reply = client.request(ledger_protocol_subject(shard), serde_json::to_vec(&request).unwrap().into()).await;
            serde_json::from_slice::<ShardReply>(&reply.expect("the shard answers").payload).unwrap()
        }
    };

    // 1. claimed (key and reference), never posted
    let lost_key = key_homed_away(&ring, cluster.tenant, &[target], "lost");
    let lost_home = ring.shard_for_key(cluster.tenant, &lost_key);
    let mut lost_body = transfer_body(&lost_key, &from, &to, 5, "IDR");
    lost_body["external_ref"] = json!({"type": "psp", "ref": reference.reference});
    let lost = command_of(&lost_body);
    let claim = ClaimKeyCommand {
        tenant_id: cluster.tenant,
        idempotency_key: lost_key.clone(),
        fingerprint: lost.fingerprint.clone(),
        target_shard: target,
    };
    assert_eq!(write(lost_home, Command::ClaimKey(claim)).await, ShardReply::Claim(ClaimAnswer::Claimed));
    let claim = ClaimRefCommand {
        tenant_id: cluster.tenant,
        external_ref: reference.clone(),
        idempotency_key: lost_key.clone(),
        fingerprint: lost.fingerprint.clone(),
    };
    assert_eq!(write(reference_home, Command::ClaimRef(claim)).await, ShardReply::Claim(ClaimAnswer::Claimed));
    // 2. claimed and posted, the outcome never recorded at the key's home
    let done_key = key_homed_away(&ring, cluster.tenant, &[target], "done");
    let done_home = ring.shard_for_key(cluster.tenant, &done_key);
    let done = command_of(&transfer_body(&done_key, &from, &to, 7, "IDR"));
    let claim = ClaimKeyCommand {
        tenant_id: cluster.tenant,
        idempotency_key: done_key.clone(),
        fingerprint: done.fingerprint.clone(),
        target_shard: target,
    };
    assert_eq!(write(done_home, Command::ClaimKey(claim)).await, ShardReply::Claim(ClaimAnswer::Claimed));
    let posted = write(target, Command::Post(done.clone())).await;
    assert_eq!(posted.status(), 200, "{posted:?}");

    // the sweeper settles both once they are older than claim_abandon_after_ms
    let key_status = |home: ShardId, key: String| {
        let cluster = &cluster;
        async move {
            let db = cluster.db(home as usize).await;
            let status: Option<String> =
                sqlx::query_scalar("select status from ledger_idempotency where tenant_id = $1 and idempotency_key = $2")
                    .bind(cluster.tenant)
                    .bind(key)
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            db.close().await;
            status
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while key_status(lost_home, lost_key.clone()).await.as_deref() != Some("FAILED_FINAL")
        || key_status(done_home, done_key.clone()).await.as_deref() != Some("SUCCEEDED")
    {
        assert!(std::time::Instant::now() < deadline, "the sweeper did not settle the claims");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let found = cluster.call("transactions.get", json!({"idempotency_key": done_key})).await.ok();
    assert_eq!(found["ledger_tx_id"], posted.body_value()["ledger_tx_id"]);

    // the lost request is refused however it comes back, and posted nothing
    let before = transactions_on(&cluster, target as usize).await;
    cluster.call("transactions.post", lost_body.clone()).await.err("REQUEST_ABANDONED", 409);
    let late = write(target, Command::Post(lost)).await;
    assert_eq!(late.body_value()["error"]["code"], "REQUEST_ABANDONED", "{late:?}");
    assert_eq!(transactions_on(&cluster, target as usize).await, before);
    // its reference is free for another request
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut other = transfer_body("other", &from, &to, 3, "IDR");
    other["external_ref"] = json!({"type": "psp", "ref": reference.reference});
    loop {
        let reply = cluster.call("transactions.post", other.clone()).await;
        if reply.is_ok() {
            break;
        }
        assert_eq!(reply.code(), Some("IN_PROGRESS"), "only a wait for the sweeper is expected");
        assert!(std::time::Instant::now() < deadline, "the reference stayed claimed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    cluster.finish().await;
}

fn ledger_protocol_subject(shard: ShardId) -> String {
    format!("ledger.internal.v1.shard.{shard}")
}

/// `ledger-router --node`: a router running beside a node hands the requests for that
/// node's shards to them in-process, and reaches the other node's shards over NATS, for
/// single-shard posts, sagas across the two nodes, retries and the audit alike.
#[tokio::test]
async fn a_router_beside_a_node_reaches_its_shards_in_process_and_the_others_over_nats() {
    let cluster = Cluster::start_beside(4).await;
    let (local, remote): (Vec<ShardId>, Vec<ShardId>) =
        (0..4).partition(|shard| cluster.config.node("node-0").unwrap().shards.contains(shard));
    assert_eq!((local.len(), remote.len()), (2, 2), "two shards on each node");
    let mut spy = cluster.client.subscribe("ledger.internal.v1.shard.*").await.unwrap();
    cluster.client.flush().await.unwrap();

    let ring = cluster.config.ring();
    let near = pair_on(&ring, cluster.tenant, local[0], "near");
    let far = pair_on(&ring, cluster.tenant, remote[0], "far");
    for code in [&near.0, &near.1, &far.0, &far.1] {
        cluster.create_account(code, "LIABILITY", "IDR", true).await;
    }
    let homed_on = |shard: ShardId, tag: &str| key_homed_on(&ring, cluster.tenant, shard, tag);
    let near_key = homed_on(local[0], "near");
    let first = cluster.transfer(&near_key, &near.0, &near.1, 40, "IDR").await.ok();
    let again = cluster.transfer(&near_key, &near.0, &near.1, 40, "IDR").await.ok();
    assert_eq!((again["replayed"].as_bool(), &again["ledger_tx_id"]), (Some(true), &first["ledger_tx_id"]));
    cluster.transfer(&homed_on(remote[0], "far"), &far.0, &far.1, 25, "IDR").await.ok();
    // a saga from a local shard's account to a remote shard's, and back
    cluster.transfer(&homed_on(local[0], "out"), &near.1, &far.0, 15, "IDR").await.ok();
    cluster.transfer(&homed_on(remote[0], "in"), &far.1, &near.0, 5, "IDR").await.ok();

    assert_eq!(cluster.balance(&near.1).await, 40 - 15);
    assert_eq!(cluster.balance(&far.0).await, -25 + 15);
    assert_eq!(cluster.balance(&near.0).await, -40 + 5);
    assert_eq!(cluster.audit().await["ok"], true);

    // what crossed NATS to a shard went to the other node's shards only
    // (the recovery loop asks every shard about stale sagas and claims all the time: read
    // what has arrived so far, not until it stops)
    let mut subjects = std::collections::BTreeSet::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, spy.next()).await {
        subjects.insert(message.subject.to_string());
    }
    let expected: std::collections::BTreeSet<String> =
        remote.iter().map(|shard| ledger_protocol::subject::shard_subject(*shard)).collect();
    assert_eq!(subjects, expected, "the router's own node's shards are reached in-process");
    cluster.finish().await;
}

/// With `limits.batches_in_flight_per_database_server = 1`, the four shards (one
/// PostgreSQL server holds them all) take turns writing: every transfer still posts exactly
/// once, and what a writer took while it waited for its turn went into shared commits.
#[tokio::test]
async fn shards_on_one_server_take_turns_and_lose_nothing() {
    let cluster =
        Cluster::start_tuned(4, |toml| toml.replace("[limits]\n", "[limits]\nbatches_in_flight_per_database_server = 1\n")).await;
    let ring = cluster.config.ring();
    let pairs: Vec<(String, String)> =
        (0..4).map(|shard| pair_on(&ring, cluster.tenant, shard, &format!("turn{shard}"))).collect();
    for (from, to) in &pairs {
        cluster.create_account(from, "LIABILITY", "IDR", true).await;
        cluster.create_account(to, "LIABILITY", "IDR", true).await;
    }
    let per_shard = 60;
    let asks = pairs.iter().enumerate().flat_map(|(shard, (from, to))| {
        let ring = &ring;
        let cluster = &cluster;
        (0..per_shard).map(move |i| async move {
            // keys homed with the accounts: one commit per transfer at most, no claim
            let key = key_homed_on(ring, cluster.tenant, shard as ShardId, &format!("turn-{shard}-{i}"));
            cluster.transfer(&key, from, to, 1, "IDR").await
        })
    });
    for reply in futures::future::join_all(asks).await {
        reply.ok();
    }
    for (shard, (_, to)) in pairs.iter().enumerate() {
        assert_eq!(cluster.balance(to).await, per_shard);
        assert_eq!(transactions_on(&cluster, shard).await, per_shard);
    }
    let commits = commits_of_transfers(&cluster).await;
    let transfers = 4 * per_shard;
    assert!(commits < transfers, "{transfers} concurrent transfers took {commits} commits");
    assert_eq!(cluster.audit().await["ok"], true);
    cluster.finish().await;
}

/// The database transactions that wrote the cluster's transfers: rows a transaction
/// inserts share its id (`xmin`).
async fn commits_of_transfers(cluster: &Cluster) -> i64 {
    let mut commits = 0;
    for shard in 0..4 {
        let db = cluster.db(shard).await;
        commits += sqlx::query_scalar::<_, i64>("select count(distinct xmin::text) from ledger_transaction")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
    }
    commits
}
