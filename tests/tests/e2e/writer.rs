//! The shard writer: failed commits, fencing, an unreachable shard.

use ledger_node::shard::{FaultHooks, ShardActor, ShardArgs};
use ledger_tests::Cluster;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn a_failed_commit_leaves_no_state_ahead_of_the_database() {
    let cluster = Cluster::start(1).await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    cluster.create_account("bob", "LIABILITY", "IDR", false).await;
    cluster.transfer("fund", "cash", "alice", 1_000, "IDR").await.ok();
    let before = cluster.footprint().await;
    cluster.faults[&0].fail_next_commit.store(true, Ordering::SeqCst);
    let error = cluster.transfer("pay", "alice", "bob", 600, "IDR").await.err("SHARD_UNAVAILABLE", 503);
    assert!(error["message"].as_str().unwrap().contains("could not commit"));
    assert_eq!(cluster.footprint().await, before, "nothing of the failed batch is durable");
    // Had the writer kept the failed batch's balances, this retry would see 400 left and
    // be refused, and the next payment would report a wrong balance_after.
    let posted = cluster.transfer("pay", "alice", "bob", 600, "IDR").await.ok();
    assert_eq!(posted["replayed"], false);
    assert_eq!(posted["entries"][0]["balance_after_minor"], 400);
    cluster.transfer("pay-2", "alice", "bob", 500, "IDR").await.err("INSUFFICIENT_FUNDS", 422);
    assert_eq!(cluster.balance("alice").await, 400);
    assert_eq!(cluster.balance("bob").await, 600);
    cluster.finish().await;
}

#[tokio::test]
async fn a_second_writer_cannot_take_an_owned_shard() {
    let cluster = Cluster::start(1).await;
    let args = ShardArgs {
        shard_id: 0,
        database_url: cluster.config.shards[0].database_url.clone(),
        batch_commands_max: 16,
        account_cache_max: 16,
        server_gate: Arc::new(tokio::sync::Semaphore::new(1)),
        faults: Arc::new(FaultHooks::default()),
    };
    let second = ractor::Actor::spawn(None, ShardActor, args).await;
    let error = second.expect_err("the second writer must not start").to_string();
    assert!(error.contains("owned by another writer"), "{error}");
    // and a database of another shard is refused too
    let wrong = ShardArgs {
        shard_id: 7,
        database_url: cluster.config.shards[0].database_url.clone(),
        batch_commands_max: 16,
        account_cache_max: 16,
        server_gate: Arc::new(tokio::sync::Semaphore::new(1)),
        faults: Arc::new(FaultHooks::default()),
    };
    let error = ractor::Actor::spawn(None, ShardActor, wrong).await.expect_err("wrong shard refused").to_string();
    assert!(error.contains("belongs to shard 0"), "{error}");
    cluster.create_account("still-works", "ASSET", "IDR", false).await;
    cluster.finish().await;
}

#[tokio::test]
async fn an_unreachable_shard_answers_shard_unavailable_and_nothing_is_lost() {
    let mut cluster = Cluster::start(1).await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    let posted = cluster.transfer("t1", "cash", "alice", 100, "IDR").await.ok();
    cluster.stop_node().await;
    cluster.transfer("t2", "cash", "alice", 100, "IDR").await.err("SHARD_UNAVAILABLE", 503);
    cluster.start_node().await;
    let replay = cluster.transfer("t1", "cash", "alice", 100, "IDR").await.ok();
    assert_eq!(replay["ledger_tx_id"], posted["ledger_tx_id"]);
    assert_eq!(replay["replayed"], true);
    cluster.transfer("t2", "cash", "alice", 100, "IDR").await.ok();
    assert_eq!(cluster.balance("alice").await, 200);
    cluster.finish().await;
}

#[tokio::test]
async fn a_writer_whose_watermark_moved_stops_writing() {
    let cluster = Cluster::start(1).await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    let db = cluster.db(0).await;
    // as if another writer had committed behind this one's back
    let moved: i64 =
        sqlx::query_scalar("update ledger_shard set last_commit_seq = last_commit_seq + 1 returning last_commit_seq")
            .fetch_one(&db)
            .await
            .unwrap();
    let before = cluster.footprint().await;
    cluster.transfer("t2", "cash", "alice", 5, "IDR").await.err("SHARD_UNAVAILABLE", 503);
    assert_eq!(cluster.footprint().await, before, "a fenced writer writes nothing");
    // The fenced writer is gone for good; its supervisor starts a new one, which must take
    // the fence first and starts from the database's watermark, never from memory.
    let posted = retry_until_posted(&cluster, "t3").await;
    let seq: i64 = sqlx::query_scalar("select commit_seq from ledger_transaction where ledger_tx_id = $1")
        .bind(posted["ledger_tx_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seq, moved + 1, "the new writer continues after the watermark it found");
    db.close().await;
    cluster.finish().await;
}

async fn retry_until_posted(cluster: &Cluster, key: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let reply = cluster.transfer(key, "cash", "alice", 5, "IDR").await;
        if reply.is_ok() {
            return reply.ok();
        }
        assert_eq!(reply.code(), Some("SHARD_UNAVAILABLE"), "{}", reply.body);
        assert!(std::time::Instant::now() < deadline, "the shard writer did not come back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_writer_that_dies_is_restarted_by_its_supervisor() {
    let cluster = Cluster::start(1).await;
    cluster.create_account("cash", "ASSET", "IDR", true).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    cluster.transfer("t1", "cash", "alice", 5, "IDR").await.ok();
    cluster.faults[&0].crash_writer.store(true, Ordering::SeqCst);
    cluster.transfer("t2", "cash", "alice", 5, "IDR").await.err("SHARD_UNAVAILABLE", 503);
    let posted = retry_until_posted(&cluster, "t2").await;
    assert_eq!(posted["entries"][1]["balance_after_minor"], 10, "the new writer starts from the database");
    assert_eq!(cluster.balance("alice").await, 10);
    cluster.finish().await;
}
