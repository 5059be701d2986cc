//! The NATS service surface: micro discovery, topology, events.

use async_nats::jetstream;
use futures::StreamExt;
use ledger_tests::{Cluster, transfer_body};
use serde_json::json;

#[tokio::test]
async fn the_ledger_service_answers_discovery_and_topology() {
    let cluster = Cluster::start(2).await;
    for subject in ["$SRV.PING.ledger", "$SRV.INFO.ledger", "$SRV.STATS.ledger"] {
        let reply = cluster.client.request(subject, "".into()).await.expect(subject);
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["name"], "ledger", "{subject}: {body}");
    }
    let topology = cluster.raw("ledger.v1.admin.topology", b"{}".to_vec()).await.ok();
    assert_eq!(topology["shards"].as_array().unwrap().len(), 2);
    assert_eq!(topology["ring"]["virtual_nodes_per_shard"], 128);
    assert_eq!(topology["nodes"][0]["name"], "node-0");
    cluster.raw("ledger.v1.admin.topology", b"{\"x\":1}".to_vec()).await.err("INVALID_REQUEST", 400);
    cluster.finish().await;
}

#[tokio::test]
async fn accounts_spread_over_shards_and_both_kinds_of_transfer_post() {
    let cluster = Cluster::start(2).await;
    let ring = cluster.config.ring();
    let codes: Vec<String> = (0..40).map(|i| format!("acct-{i}")).collect();
    for code in &codes {
        cluster.create_account(code, "LIABILITY", "IDR", true).await;
    }
    let shard_of = |code: &str| ring.shard_for_account(ledger_core::ids::account_id(cluster.tenant, code));
    let same: Vec<&String> = codes.iter().filter(|c| shard_of(c) == shard_of(&codes[0])).collect();
    let other = codes.iter().find(|c| shard_of(c) != shard_of(&codes[0])).expect("40 accounts use both shards");
    let posted = cluster.transfer("same", same[0], same[1], 10, "IDR").await.ok();
    let found = cluster.call("transactions.get", json!({"ledger_tx_id": posted["ledger_tx_id"]})).await.ok();
    assert_eq!(found["entries"].as_array().unwrap().len(), 2);
    cluster.call("transactions.get", json!({"idempotency_key": "same"})).await.ok();
    let cross = cluster.transfer("cross", same[0], other, 10, "IDR").await.ok();
    assert!(ledger_core::ids::is_saga_id(cross["ledger_tx_id"].as_str().unwrap().parse().unwrap()));
    assert!(!ledger_core::ids::is_saga_id(posted["ledger_tx_id"].as_str().unwrap().parse().unwrap()));
    for shard in 0..2 {
        let db = cluster.db(shard).await;
        let count: i64 = sqlx::query_scalar("select count(*) from ledger_account").fetch_one(&db).await.unwrap();
        assert!(count > 0, "shard {shard} holds accounts");
        db.close().await;
    }
    cluster.finish().await;
}

#[tokio::test]
async fn posted_transactions_reach_the_event_stream() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    let posted = cluster.transfer("ev-1", "cash", "alice", 42, "IDR").await.ok();
    let js = jetstream::new(cluster.client.clone());
    let stream = js.get_stream("LEDGER_EVENTS").await.expect("stream exists");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: format!("ledger.v1.events.{}.transaction.posted", cluster.tenant),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
        .await
        .expect("event within 10 s")
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(event["ledger_tx_id"], posted["ledger_tx_id"]);
    // the outbox keeps events less what its columns say; what is published is whole
    let mut keys: Vec<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "business_ref",
            "commit_seq",
            "entries",
            "event_id",
            "event_type",
            "external_ref",
            "ledger_tx_id",
            "occurred_at",
            "posted_at",
            "reverses_ledger_tx_id",
            "tenant_id",
            "type"
        ],
        "{event}"
    );
    assert_eq!(event["event_type"], "transaction.posted");
    assert_eq!(event["tenant_id"], cluster.tenant.to_string());
    assert_eq!((&event["reverses_ledger_tx_id"], &event["external_ref"]), (&serde_json::Value::Null, &serde_json::Value::Null));
    for entry in event["entries"].as_array().unwrap() {
        let mut fields: Vec<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["account_id", "amount_minor", "currency", "side"], "{event}");
        assert_eq!(entry["currency"], "IDR");
    }
    // (a transfer across shards is published once per leg, each with its clearing entry)
    assert!(event["entries"].as_array().unwrap().iter().all(|e| e["amount_minor"] == 42), "{event}");
    let msg_id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
    assert_eq!(msg_id.as_deref(), event["event_id"].as_str());
    // events are numbered gap-free in commit order, and the relay's cursor reaches the last
    for shard in 0..cluster.config.shards.len() {
        let db = cluster.db(shard).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (count, max, cursor, watermark): (i64, i64, i64, i64) = sqlx::query_as(
                "select (select count(*) from ledger_outbox), (select coalesce(max(event_seq), 0) from ledger_outbox),
                        (select last_published_event_seq from ledger_outbox_cursor), (select last_event_seq from ledger_shard)",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            assert_eq!((count, watermark), (max, max), "gap-free, and the watermark names the last event");
            let stored_whole: i64 =
                sqlx::query_scalar("select count(*) from ledger_outbox where payload ? 'event_id'").fetch_one(&db).await.unwrap();
            assert_eq!(stored_whole, 0, "events are stored less what the row's columns say");
            if cursor == max {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "relay cursor stuck at {cursor} of {max}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        db.close().await;
    }
    cluster.finish().await;
}

#[tokio::test]
async fn a_request_that_asks_gets_the_time_the_ledger_held_it() {
    use ledger_protocol::headers::{SERVER_MICROS, TIMING_REQUEST};
    let cluster = Cluster::start(2).await;
    let codes = cluster.codes_on(0, "timed", 2);
    for code in &codes {
        cluster.create_account(code, "LIABILITY", "IDR", true).await;
    }
    let subject = format!("ledger.v1.{}.transactions.post", cluster.tenant.hyphenated());
    let body = |key: &str, amount: i64| serde_json::to_vec(&transfer_body(key, &codes[0], &codes[1], amount, "IDR")).unwrap();
    let asking = || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TIMING_REQUEST, "1");
        headers
    };
    let held_us = |message: &async_nats::Message| -> Option<u64> {
        message.headers.as_ref()?.get(SERVER_MICROS).map(|v| v.as_str().parse().expect("whole microseconds"))
    };

    let sent = std::time::Instant::now();
    let posted = cluster.client.request_with_headers(subject.clone(), asking(), body("timed-1", 5).into()).await.unwrap();
    let round_trip_us = sent.elapsed().as_micros() as u64;
    let held = held_us(&posted).expect("the reply says how long the ledger held the request");
    assert!(held > 0 && held <= round_trip_us, "held {held} µs of a {round_trip_us} µs round trip");
    let headers = posted.headers.as_ref().unwrap();
    assert!(headers.get("Nats-Service-Error").is_none(), "a posted transfer is not an error");
    let reply: serde_json::Value = serde_json::from_slice(&posted.payload).unwrap();
    assert_eq!(reply["replayed"], false, "{reply}");

    // a refusal keeps its error headers beside the timing
    let refused = cluster.client.request_with_headers(subject.clone(), asking(), body("timed-1", 6).into()).await.unwrap();
    assert!(held_us(&refused).is_some());
    let headers = refused.headers.as_ref().unwrap();
    assert_eq!(headers.get("Nats-Service-Error").unwrap().as_str(), "IDEMPOTENCY_CONFLICT");
    assert_eq!(headers.get("Nats-Service-Error-Code").unwrap().as_str(), "409");

    // a client that does not ask gets the reply as before: a success carries no headers
    let plain = cluster.client.request(subject, body("timed-2", 5).into()).await.unwrap();
    assert!(plain.headers.is_none(), "{:?}", plain.headers);
    cluster.finish().await;
}
