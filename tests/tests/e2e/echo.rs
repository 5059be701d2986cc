//! `ledger-echo`, the benchmark's floor (`ledger_load::echo`): it answers the post and
//! topology subjects with nothing behind it, says what it is, and refuses to start where
//! a ledger serves.

use async_nats::HeaderMap;
use ledger_load::echo::{self, ECHO_BODY, EchoTopology};
use ledger_protocol::headers;
use ledger_tests::{Cluster, NatsServer, transfer_body};
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn the_echo_answers_posts_without_a_ledger_and_says_what_it_is() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let topology = EchoTopology { shards: 3, virtual_nodes_per_shard: 16 };
    let echo = echo::start(client.clone(), topology).await.expect("no ledger serves on a fresh NATS");
    let serving = tokio::spawn(echo.run(std::future::pending()));

    let answer = client.request(echo::TOPOLOGY_SUBJECT, "{}".into()).await.expect("topology");
    let topology: Value = serde_json::from_slice(&answer.payload).expect("JSON");
    assert_eq!(topology["diagnostic_echo"], true);
    let shards: Vec<u64> =
        topology["shards"].as_array().expect("shards").iter().map(|s| s["shard_id"].as_u64().expect("id")).collect();
    assert_eq!(shards, [0, 1, 2]);
    assert_eq!(topology["ring"]["virtual_nodes_per_shard"], 16);

    // a post gets the echo's body, which names no transaction, and no error headers
    let subject = format!("ledger.v1.{}.transactions.post", Uuid::new_v4());
    let body = serde_json::to_vec(&transfer_body("k-1", "cash", "wallet", 100, "USD")).expect("body");
    let answer = client.request(subject.clone(), body.clone().into()).await.expect("an answer");
    assert_eq!(&answer.payload[..], ECHO_BODY.as_bytes());
    assert!(answer.headers.is_none(), "{:?}", answer.headers);
    let echoed: Value = serde_json::from_slice(&answer.payload).expect("JSON");
    assert_eq!(echoed["posted"], false);
    assert!(echoed.get("ledger_tx_id").is_none());

    // server timing, as the ledger gives it
    let mut asking = HeaderMap::new();
    asking.insert(headers::TIMING_REQUEST, "1");
    let answer = client.request_with_headers(subject, asking, body.into()).await.expect("an answer");
    let micros = answer.headers.as_ref().and_then(|h| h.get(headers::SERVER_MICROS)).map(|v| v.as_str().to_owned());
    assert!(micros.expect("the timing header").parse::<u64>().is_ok());

    // nothing else of the protocol is answered
    let other = client.request(format!("ledger.v1.{}.accounts.get", Uuid::new_v4()), "{}".into()).await;
    assert!(other.is_err(), "accounts.get must find no responder: {other:?}");
    serving.abort();
}

#[tokio::test]
async fn the_echo_refuses_to_start_where_a_ledger_serves() {
    let cluster = Cluster::start(1).await;
    let client = async_nats::connect(&cluster.nats.url).await.expect("connect");
    let refused = echo::start(client, EchoTopology { shards: 1, virtual_nodes_per_shard: 128 }).await;
    let error = refused.err().expect("the echo must refuse beside a ledger").to_string();
    assert!(error.contains("already answers ledger.v1.admin.topology"), "{error}");
    // the ledger kept its subjects: a post is still posted by it
    cluster.create_account("cash", "ASSET", "USD", true).await;
    cluster.create_account("wallet", "LIABILITY", "USD", false).await;
    let posted = cluster.transfer("k-1", "cash", "wallet", 100, "USD").await.ok();
    assert!(posted["ledger_tx_id"].is_string(), "{posted}");
    cluster.finish().await;
}
