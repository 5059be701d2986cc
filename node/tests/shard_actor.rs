//! The shard writer actor on its own, against a real PostgreSQL database, on tokio's
//! paused clock: the clock moves only when every task waits on a timer, so a test that
//! finds it unmoved proves that nothing in the write path waited on one.
//!
//! What is tested: writes that arrive together commit in one batch; a lone write is
//! flushed at once; writes that queue while the server's turn is taken join the batch
//! that then flushes; a failed commit leaves nothing in memory ahead of the database;
//! a writer whose watermark moved (another writer committed) stops for good.

use ledger_core::batch::Outcome;
use ledger_core::command::Command;
use ledger_node::shard::{FaultHooks, ShardActor, ShardArgs, ShardMsg, WriteFailure, WriteResult};
use ledger_protocol::request::{CreateAccountRequest, PostRequest, parse};
use ractor::{Actor, ActorRef, ActorStatus};
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x5eed);

fn server_url() -> String {
    std::env::var("LEDGER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh database of its own (dropped by the test runner's next start if left behind).
struct Database {
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Database {
        let name = format!("ledger_test_actor_{}", Uuid::new_v4().simple());
        let url = format!("{}/{name}", server_url());
        ledger_node::server::ensure_database(&url).await.expect("create the test database");
        Database { name, url }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    async fn drop(self) {
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url())).await.expect("connect");
        let drop = format!("drop database if exists \"{}\" with (force)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop the test database");
    }
}

struct Writer {
    actor: ActorRef<ShardMsg>,
    gate: Arc<Semaphore>,
    faults: Arc<FaultHooks>,
}

async fn start_writer(database: &Database, turns: usize) -> Writer {
    let gate = Arc::new(Semaphore::new(turns));
    let faults = Arc::new(FaultHooks::default());
    let args = ShardArgs {
        shard_id: 0,
        database_url: database.url.clone(),
        batch_commands_max: 500,
        account_cache_max: 1000,
        server_gate: gate.clone(),
        faults: faults.clone(),
    };
    let (actor, _) = Actor::spawn(None, ShardActor, args).await.expect("the writer starts");
    Writer { actor, gate, faults }
}

fn create(code: &str, account_type: &str, allow_negative: bool) -> Command {
    let body = json!({"code": code, "type": account_type, "currency": "IDR", "allow_negative": allow_negative});
    let request: CreateAccountRequest = parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    Command::CreateAccount(request.into_command(TENANT).unwrap())
}

fn transfer(key: &str, from: &str, to: &str, amount: i64) -> Command {
    let body = json!({"idempotency_key": key, "type": "TRANSFER", "actor": "test", "entries": [
        {"account_code": from, "side": "DEBIT", "amount_minor": amount, "currency": "IDR"},
        {"account_code": to, "side": "CREDIT", "amount_minor": amount, "currency": "IDR"}]});
    let request: PostRequest = parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    Command::Post(request.into_command(TENANT).unwrap())
}

/// Sends commands in one message; their answers, in order, once all have come.
async fn write(writer: &Writer, commands: Vec<Command>) -> Vec<WriteResult> {
    let answers = send(writer, commands);
    let mut results = Vec::new();
    for answer in answers {
        results.push(answer.await.expect("the writer answers"));
    }
    results
}

fn send(writer: &Writer, commands: Vec<Command>) -> Vec<ractor::concurrency::OneshotReceiver<WriteResult>> {
    let mut writes = Vec::new();
    let mut answers = Vec::new();
    for command in commands {
        let (port, answer) = ractor::concurrency::oneshot();
        writes.push((command, port.into()));
        answers.push(answer);
    }
    writer.actor.cast(ShardMsg::Write(writes)).expect("the writer takes writes");
    answers
}

fn posted_at(result: &WriteResult) -> chrono::DateTime<chrono::Utc> {
    match result {
        Ok(Outcome::Posted(posted)) => posted.posted_at,
        other => panic!("expected a posting, got {other:?}"),
    }
}

async fn commit_seqs(database: &Database) -> Vec<(i64, chrono::DateTime<chrono::Utc>)> {
    let mut conn = database.connect().await;
    sqlx::query_as("select commit_seq, posted_at from ledger_transaction order by commit_seq")
        .fetch_all(&mut conn)
        .await
        .expect("read the journal")
}

async fn setup(turns: usize) -> (Database, Writer) {
    let database = Database::create().await;
    let writer = start_writer(&database, turns).await;
    let created = write(&writer, vec![create("cash", "ASSET", true), create("alice", "LIABILITY", false)]).await;
    assert!(created.iter().all(|r| matches!(r, Ok(Outcome::Account { .. }))), "{created:?}");
    (database, writer)
}

async fn stop(database: Database, writer: Writer) {
    writer.actor.stop_and_wait(None, None).await.expect("the writer stops");
    database.drop().await;
}

#[tokio::test(start_paused = true)]
async fn writes_that_arrive_together_commit_in_one_batch_without_waiting_on_a_timer() {
    let (database, writer) = setup(2).await;
    let clock = Instant::now();
    let results = write(&writer, (0..20).map(|i| transfer(&format!("k{i}"), "cash", "alice", 10)).collect()).await;
    let times: std::collections::BTreeSet<_> = results.iter().map(posted_at).collect();
    assert_eq!(times.len(), 1, "one batch: one posting time for all twenty");
    let lone = write(&writer, vec![transfer("lone", "cash", "alice", 1)]).await;
    assert!(posted_at(&lone[0]) >= *times.first().unwrap());
    assert_eq!(Instant::now(), clock, "no write waited on a timer: the paused clock never moved");
    let seqs: Vec<i64> = commit_seqs(&database).await.into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (1..=21).collect::<Vec<_>>(), "gap-free, in commit order");
    stop(database, writer).await;
}

#[tokio::test(start_paused = true)]
async fn writes_queued_while_the_server_is_busy_flush_together_when_a_turn_frees() {
    let (database, writer) = setup(1).await;
    // another shard of the same server holds the only turn
    let held = writer.gate.clone().acquire_owned().await.unwrap();
    let first = send(&writer, vec![transfer("a", "cash", "alice", 5)]);
    let second = send(&writer, vec![transfer("b", "cash", "alice", 5), transfer("c", "cash", "alice", 5)]);
    tokio::task::yield_now().await;
    assert!(commit_seqs(&database).await.is_empty(), "nothing is written while the turn is taken");
    drop(held);
    let mut results = Vec::new();
    for answer in first.into_iter().chain(second) {
        results.push(answer.await.unwrap());
    }
    let times: std::collections::BTreeSet<_> = results.iter().map(posted_at).collect();
    assert_eq!(times.len(), 1, "the three writes that queued meanwhile commit in one batch");
    stop(database, writer).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_leaves_nothing_in_memory_ahead_of_the_database() {
    let (database, writer) = setup(2).await;
    write(&writer, vec![transfer("fund", "cash", "alice", 1000)]).await;
    writer.faults.fail_next_commit.store(true, Ordering::SeqCst);
    let failed = write(&writer, vec![transfer("pay", "alice", "cash", 600)]).await;
    assert!(matches!(failed[0], Err(WriteFailure::Unavailable(_))), "{failed:?}");
    assert_eq!(commit_seqs(&database).await.len(), 1, "nothing of the failed batch is in the journal");
    // had the writer kept the failed batch's balance (400), the retry would be refused
    let retried = write(&writer, vec![transfer("pay", "alice", "cash", 600)]).await;
    match &retried[0] {
        Ok(Outcome::Posted(posted)) => assert_eq!(posted.entries[0].balance_after_minor, 400),
        other => panic!("the retry posts from the database's state: {other:?}"),
    }
    let seqs: Vec<i64> = commit_seqs(&database).await.into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, [1, 2], "the failed batch used no commit_seq");
    stop(database, writer).await;
}

#[tokio::test(start_paused = true)]
async fn a_writer_whose_watermark_moved_answers_unavailable_and_stops_for_good() {
    let (database, writer) = setup(2).await;
    write(&writer, vec![transfer("before", "cash", "alice", 5)]).await;
    // another writer committed behind this one's back
    let mut other = database.connect().await;
    sqlx::query("update ledger_shard set last_commit_seq = last_commit_seq + 1").execute(&mut other).await.unwrap();
    let fenced = write(&writer, vec![transfer("after", "cash", "alice", 5)]).await;
    assert!(matches!(fenced[0], Err(WriteFailure::Unavailable(_))), "{fenced:?}");
    for _ in 0..100 {
        if writer.actor.get_status() == ActorStatus::Stopped {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(writer.actor.get_status(), ActorStatus::Stopped, "a fenced writer never writes again");
    let journal = commit_seqs(&database).await;
    assert_eq!(journal.len(), 1, "the fenced batch wrote nothing");
    database.drop().await;
}
