//! Fault injection with real processes (ARCHITECTURE.md, "What must survive"): a node or
//! the saga coordinator killed with SIGKILL, PostgreSQL crashed and restarted, nats-server
//! restarted, a second node started for owned shards, all under a mixed load of single-
//! and cross-shard transfers with clients that retry with the same key after timeouts,
//! and concurrent reads. Each test ends with the same proof: every acknowledged
//! transaction is there exactly once, no key posted twice, every saga terminal, the audit
//! ok, and the money of the users conserved.

use ledger_tests::procs::ProcCluster;
use ledger_tests::transfer_body;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_ledger-proc");
const SHARDS: usize = 4;
const USERS_PER_SHARD: usize = 3;
const FUNDING: i64 = 10_000;
/// How long one client waits for a reply before it retries with the same key.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

struct Workload {
    cluster: Arc<ProcCluster>,
    users: Vec<String>,
}

/// The users (liabilities that may not go negative), funded from a cash account on their
/// own shard: their total is `FUNDING` each, and transfers among them only move it.
async fn setup(cluster: ProcCluster) -> Workload {
    let mut users = Vec::new();
    for shard in 0..SHARDS as u16 {
        let codes = codes_on(&cluster, shard, "cash", 1).into_iter().chain(codes_on(&cluster, shard, "user", USERS_PER_SHARD));
        for (index, code) in codes.enumerate() {
            let (kind, negative) = if index == 0 { ("ASSET", true) } else { ("LIABILITY", false) };
            let body = json!({"code": code, "type": kind, "currency": "IDR", "allow_negative": negative});
            let reply = submit(&cluster, "accounts.create", &body, Duration::from_secs(30)).await;
            assert!(matches!(reply, Final::Done(_)), "create {code}: {reply:?}");
            if index > 0 {
                let cash = codes_on(&cluster, shard, "cash", 1).remove(0);
                let fund = transfer_body(&format!("fund-{code}"), &cash, &code, FUNDING, "IDR");
                let reply = submit(&cluster, "transactions.post", &fund, Duration::from_secs(30)).await;
                assert!(matches!(reply, Final::Done(_)), "fund {code}: {reply:?}");
                users.push(code);
            }
        }
    }
    Workload { cluster: Arc::new(cluster), users }
}

fn codes_on(cluster: &ProcCluster, shard: u16, tag: &str, n: usize) -> Vec<String> {
    ledger_tests::codes_on(&cluster.config.ring(), cluster.tenant, shard, tag, n)
}

#[derive(Debug, Clone, PartialEq)]
enum Final {
    /// Succeeded: the reply.
    Done(Value),
    /// A business refusal: its code.
    Refused(String),
    /// No definitive answer before the deadline.
    Unknown,
}

/// Sends a request until it has a definitive answer, retrying with the same body (so
/// the same idempotency key) after timeouts, SHARD_UNAVAILABLE, INTERNAL and IN_PROGRESS.
async fn submit(cluster: &ProcCluster, operation: &str, body: &Value, patience: Duration) -> Final {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        match cluster.call(operation, body, CLIENT_TIMEOUT).await {
            Some(reply) if reply.is_ok() => return Final::Done(reply.body),
            Some(reply) => match reply.code() {
                Some("SHARD_UNAVAILABLE" | "INTERNAL" | "IN_PROGRESS") | None => {}
                Some(code) => return Final::Refused(code.to_owned()),
            },
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Final::Unknown
}

struct Tiny(u64);

impl Tiny {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// What the clients sent and what they were told, by key.
type Record = Vec<(String, Value, Final)>;

/// Runs `clients` closed-loop clients until `stop`: random transfers among the users (most
/// cross shards), each retried with its key until definitive, and a read now and then.
fn start_load(work: &Workload, clients: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Record>> {
    (0..clients)
        .map(|client| {
            let cluster = work.cluster.clone();
            let users = work.users.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut random = Tiny(0x9e37_79b9_7f4a_7c15 ^ ((client as u64 + 1) * 0x2545_f491_4f6c_dd1d));
                let mut record = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let from = random.next(users.len());
                    let to = (from + 1 + random.next(users.len() - 1)) % users.len();
                    let key = format!("load-{client}-{n}");
                    let amount = 1 + random.next(3_000) as i64;
                    let three = |from: usize, other: usize, to: usize, first: i64, second: i64| {
                        json!({"idempotency_key": key, "type": "TRANSFER", "actor": "load", "entries": [
                            {"account_code": users[from], "side": "DEBIT", "amount_minor": first, "currency": "IDR"},
                            {"account_code": users[other], "side": "DEBIT", "amount_minor": second, "currency": "IDR"},
                            {"account_code": users[to], "side": "CREDIT", "amount_minor": first + second, "currency": "IDR"},
                        ]})
                    };
                    let shard = |user: usize| user / USERS_PER_SHARD;
                    let body = if n % 10 == 1 {
                        // doomed: the first debiting leg posts (users are listed shard by shard),
                        // the second is refused, so the first is compensated; every other
                        // time the credit is on the first leg's shard, so that the leg
                        // undone brought money in (held, so it cannot have been spent)
                        let other = (from + USERS_PER_SHARD) % users.len();
                        let to = if n % 20 == 1 {
                            shard(from) * USERS_PER_SHARD + (from + 1) % USERS_PER_SHARD
                        } else {
                            (from + 2 * USERS_PER_SHARD) % users.len()
                        };
                        three(from, other, to, 1, FUNDING * 50)
                    } else if n % 4 == 0 {
                        // two debiting legs on two shards, sometimes refused, and the credit
                        // anywhere (often on a debiting leg's shard)
                        let mut other = random.next(users.len());
                        while shard(other) == shard(from) {
                            other = random.next(users.len());
                        }
                        let mut to = random.next(users.len());
                        while to == from || to == other {
                            to = random.next(users.len());
                        }
                        three(from, other, to, amount, amount * 2)
                    } else {
                        transfer_body(&key, &users[from], &users[to], amount, "IDR")
                    };
                    let outcome = submit(&cluster, "transactions.post", &body, Duration::from_secs(40)).await;
                    record.push((key, body, outcome));
                    if n % 3 == 0 {
                        let read = json!({"account_code": users[random.next(users.len())]});
                        let _ = cluster.call("accounts.get", &read, CLIENT_TIMEOUT).await;
                    }
                }
                record
            })
        })
        .collect()
}

async fn stop_load(stop: Arc<AtomicBool>, load: Vec<tokio::task::JoinHandle<Record>>) -> Record {
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for client in load {
        all.extend(client.await.expect("load client"));
    }
    all
}

/// The proof every fault test ends with.
async fn verify(work: &Workload, mut record: Record, posted_at_least: usize) {
    let cluster = &work.cluster;
    // requests that never got an answer get one now: the same key, whatever happened
    for (_, body, outcome) in record.iter_mut() {
        if *outcome == Final::Unknown {
            *outcome = submit(cluster, "transactions.post", body, Duration::from_secs(60)).await;
            assert_ne!(*outcome, Final::Unknown, "a key never settled: {body}");
        }
    }
    // every saga ends (resumed by a router's recovery loop if its coordinator died)
    let deadline = Instant::now() + Duration::from_secs(60);
    let audit = loop {
        let audit = cluster.audit().await;
        if let Some(audit) = &audit
            && audit["cluster"]["sagas_in_flight"] == 0
            && audit["ok"] == true
        {
            break audit.clone();
        }
        assert!(Instant::now() < deadline, "the audit did not settle: {audit:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(audit["unreachable_shards"].as_array().unwrap().is_empty());

    let posted: Vec<&(String, Value, Final)> = record.iter().filter(|(_, _, o)| matches!(o, Final::Done(_))).collect();
    assert!(posted.len() >= posted_at_least, "the load ran: {} posted of {}", posted.len(), record.len());
    let cross_shard = posted
        .iter()
        .filter(|(_, _, o)| matches!(o, Final::Done(r) if ledger_core::ids::is_saga_id(r["ledger_tx_id"].as_str().unwrap().parse().unwrap())))
        .count();
    eprintln!(
        "load: {} requests, {} posted ({cross_shard} across shards), {} refused",
        record.len(),
        posted.len(),
        record.len() - posted.len()
    );
    assert!(cross_shard > 0, "the load crossed shards");
    let mut ids = HashSet::new();
    for (key, _, outcome) in &posted {
        let Final::Done(reply) = outcome else { unreachable!() };
        assert!(ids.insert(reply["ledger_tx_id"].clone()), "one transaction per key");
        // acknowledged means present: by its key, the same transaction
        let found = submit(cluster, "transactions.get", &json!({"idempotency_key": key}), Duration::from_secs(20)).await;
        let Final::Done(tx) = found else { panic!("acknowledged {key} is missing: {found:?}") };
        assert_eq!(tx["ledger_tx_id"], reply["ledger_tx_id"]);
        let sent = record.iter().find(|(k, _, _)| k == key).map(|(_, b, _)| b["entries"].as_array().unwrap().len());
        assert_eq!(tx["entries"].as_array().unwrap().len(), sent.unwrap());
    }

    // in the databases: no client key posted twice, no leg twice, every saga terminal
    let mut client_keys: HashMap<String, usize> = HashMap::new();
    let mut users_total = 0i64;
    let mut assets_minus_liabilities = 0i64;
    let mut compensations = 0i64;
    for shard in &cluster.config.shards {
        let db = sqlx::PgPool::connect(&shard.database_url).await.expect("shard database");
        let keys: Vec<String> = sqlx::query_scalar(
            "select idempotency_key from ledger_transaction
             where tx_type = 'TRANSFER' and idempotency_key not like E'\\x1f%'",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        for key in keys {
            *client_keys.entry(key).or_default() += 1;
        }
        let saga_keys: Vec<String> =
            sqlx::query_scalar("select idempotency_key from ledger_saga where saga_kind = 'POST' and state = 'POSTED'")
                .fetch_all(&db)
                .await
                .unwrap();
        for key in saga_keys {
            *client_keys.entry(key).or_default() += 1;
        }
        let twice: i64 = sqlx::query_scalar(
            "select count(*) from (select ledger_tx_id from ledger_transaction group by 1 having count(*) > 1) d",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(twice, 0, "shard {}: a transaction id twice", shard.id);
        let unfinished: i64 = sqlx::query_scalar("select count(*) from ledger_saga where state not in ('POSTED', 'COMPENSATED')")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(unfinished, 0, "shard {}: a saga in between", shard.id);
        let (assets, liabilities): (i64, i64) = sqlx::query_as(
            "select coalesce(sum(b.balance_minor) filter (where a.account_type = 'ASSET'), 0)::int8,
                    coalesce(sum(b.balance_minor) filter (where a.account_type = 'LIABILITY'), 0)::int8
             from account_balance b join ledger_account a on a.account_id = b.account_id",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let users: i64 = sqlx::query_scalar(
            "select coalesce(sum(b.balance_minor), 0)::int8 from account_balance b join ledger_account a using (account_id)
             where a.account_code like 'user-%'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        users_total += users;
        compensations +=
            sqlx::query_scalar::<_, i64>("select count(*) from ledger_transaction where tx_type = 'SAGA_COMPENSATION'")
                .fetch_one(&db)
                .await
                .unwrap();
        assets_minus_liabilities += assets - liabilities;
        db.close().await;
    }
    for (key, count) in &client_keys {
        assert_eq!(*count, 1, "key {key} posted {count} times");
    }
    for (key, _, outcome) in &record {
        let posted_in_db = client_keys.contains_key(key);
        assert_eq!(posted_in_db, matches!(outcome, Final::Done(_)), "{key}: the client was told {outcome:?}");
    }
    eprintln!("compensating transactions: {compensations}");
    assert!(compensations > 0, "the load met refused legs and compensated them");
    assert_eq!(users_total, FUNDING * work.users.len() as i64, "the users' money is conserved");
    assert_eq!(assets_minus_liabilities, 0, "assets (cash, clearing) equal liabilities (users) over the cluster");
    // debits = credits per currency over the whole cluster, clearing settled: in the audit
    for currency in audit["cluster"]["currencies"].as_array().unwrap() {
        assert_eq!(currency["balanced"], true, "{currency}");
    }
}

#[tokio::test]
async fn a_node_killed_under_load_loses_and_duplicates_nothing() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, false).await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    work.cluster.kill_node(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    work.cluster.start_node(&[]);
    work.cluster.wait_for_node().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = stop_load(stop, load).await;
    verify(&work, record, 10).await;
}

/// The router runs beside its node in one process (`ledger-router --node`), so a kill
/// takes the coordinator of every saga in flight and every shard writer at once.
#[tokio::test]
async fn a_router_and_its_node_killed_together_under_load_lose_and_duplicate_nothing() {
    let work = setup(ProcCluster::start_beside(BINARY, SHARDS).await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    work.cluster.kill_router(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    work.cluster.start_router_beside().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = stop_load(stop, load).await;
    verify(&work, record, 10).await;
}

#[tokio::test]
async fn the_saga_coordinator_killed_between_legs_is_resumed_to_the_end() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, false).await).await;
    let cluster = &work.cluster;
    // the only router from now on stops before the second step of any saga
    cluster.kill_router(0);
    let marker = cluster.logs.join("hanging");
    let marker_path = marker.to_string_lossy().into_owned();
    let hooked =
        cluster.start_router(&[("LEDGER_FAULT_HANG_BEFORE_STEP", "1"), ("LEDGER_FAULT_MARKER", marker_path.as_str())]).await;
    let ring = cluster.config.ring();
    let shard_of = |code: &str| ring.shard_for_account(ledger_core::ids::account_id(cluster.tenant, code));
    let (from, to) = (&work.users[0], work.users.iter().find(|u| shard_of(u) != shard_of(&work.users[0])).unwrap());
    let body = transfer_body("between-legs", from, to, 700, "IDR");
    // the client gives up waiting; the coordinator is stuck after the first leg
    assert!(cluster.call("transactions.post", &body, Duration::from_millis(1500)).await.is_none());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the coordinator never reached the hook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // the first leg is posted, the second is not: the money is in between
    let saga = saga_of(cluster, "between-legs").await;
    assert_eq!(saga["state"], "RUNNING");
    let legs_on = |step: usize| {
        let shard = saga["steps"][step]["shard"].as_u64().unwrap() as usize;
        legs_with_id(cluster, shard, saga["saga_id"].as_str().unwrap().parse().unwrap())
    };
    assert_eq!((legs_on(0).await, legs_on(1).await), (1, 0));
    cluster.kill_router(hooked);
    // a retry meanwhile is told to wait, never posted a second time
    let router = cluster.start_router(&[]).await;
    let early = cluster.call("transactions.post", &body, CLIENT_TIMEOUT).await;
    if let Some(reply) = &early
        && !reply.is_ok()
    {
        assert_eq!(reply.code(), Some("IN_PROGRESS"), "{}", reply.body);
    }
    // a router's recovery loop finishes the saga; the retry then gets the one reply
    let Final::Done(reply) = submit(cluster, "transactions.post", &body, Duration::from_secs(30)).await else {
        panic!("the interrupted saga did not finish")
    };
    assert_eq!(reply["entries"].as_array().unwrap().len(), 2);
    assert_eq!(saga_of(cluster, "between-legs").await["state"], "POSTED");
    let _ = router;
    let mut record = stop_load(stop, load).await;
    record.push(("between-legs".into(), body, Final::Done(reply)));
    // the load mostly waited for the stuck coordinator: few of its requests finished
    verify(&work, record, 1).await;
}

/// The gap holds close: the first leg of a saga brings money into an account, the account
/// spends all it can while the coordinator is stuck before the next leg, and that leg is
/// then refused. The first leg is compensated all the same, because the money it brought
/// in was never spendable.
#[tokio::test]
async fn a_leg_whose_account_spent_all_it_could_meanwhile_is_still_compensated() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, false).await).await;
    let cluster = &work.cluster;
    // users are listed shard by shard: the first three live on shard 0
    let (payer, payee, neighbour) = (&work.users[0], &work.users[1], &work.users[2]);
    let closed = codes_on(cluster, 1, "closed", 1).remove(0);
    let create = json!({"code": closed, "type": "LIABILITY", "currency": "IDR", "allow_negative": false});
    assert!(matches!(submit(cluster, "accounts.create", &create, Duration::from_secs(30)).await, Final::Done(_)));
    let close = json!({"account_code": closed, "status": "CLOSED", "actor": "ops"});
    assert!(matches!(submit(cluster, "accounts.set_status", &close, Duration::from_secs(30)).await, Final::Done(_)));

    cluster.kill_router(0);
    let marker = cluster.logs.join("hanging");
    let marker_path = marker.to_string_lossy().into_owned();
    let hooked =
        cluster.start_router(&[("LEDGER_FAULT_HANG_BEFORE_STEP", "1"), ("LEDGER_FAULT_MARKER", marker_path.as_str())]).await;
    // leg 0 on shard 0: payer -700, payee +300; leg 1 on shard 1: +400 to a closed account
    let body = json!({"idempotency_key": "spent-meanwhile", "type": "TRANSFER", "actor": "test", "entries": [
        {"account_code": payer, "side": "DEBIT", "amount_minor": 700, "currency": "IDR"},
        {"account_code": payee, "side": "CREDIT", "amount_minor": 300, "currency": "IDR"},
        {"account_code": closed, "side": "CREDIT", "amount_minor": 400, "currency": "IDR"},
    ]});
    assert!(cluster.call("transactions.post", &body, Duration::from_millis(1500)).await.is_none());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the coordinator never reached the hook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the payee has the 300 in his balance, held: he can spend his own money, not that
    let Final::Done(account) = submit(cluster, "accounts.get", &json!({"account_code": payee}), CLIENT_TIMEOUT * 5).await else {
        panic!("payee unreadable")
    };
    assert_eq!(account["balance"]["balance_minor"], FUNDING + 300, "{account}");
    assert_eq!(account["balance"]["held_minor"], 300, "{account}");
    let all = transfer_body("spend-all", payee, neighbour, FUNDING + 300, "IDR");
    let refused = submit(cluster, "transactions.post", &all, Duration::from_secs(30)).await;
    assert_eq!(refused, Final::Refused("INSUFFICIENT_FUNDS".into()));
    let own = transfer_body("spend-own", payee, neighbour, FUNDING, "IDR");
    let spent = submit(cluster, "transactions.post", &own, Duration::from_secs(30)).await;
    assert!(matches!(spent, Final::Done(_)), "{spent:?}");

    // a new coordinator resumes the saga: leg 1 is refused, leg 0 compensated
    cluster.kill_router(hooked);
    let router = cluster.start_router(&[]).await;
    let outcome = submit(cluster, "transactions.post", &body, Duration::from_secs(40)).await;
    assert_eq!(outcome, Final::Refused("ACCOUNT_CLOSED".into()));
    assert_eq!(saga_of(cluster, "spent-meanwhile").await["state"], "COMPENSATED");
    let balance = |code: &String| {
        let read = json!({"account_code": code});
        async move {
            match submit(cluster, "accounts.get", &read, Duration::from_secs(20)).await {
                Final::Done(account) => (account["balance"]["balance_minor"].as_i64(), account["balance"]["held_minor"].as_i64()),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(balance(payer).await, (Some(FUNDING), Some(0)));
    assert_eq!(balance(payee).await, (Some(0), Some(0)), "he spent his own, the held 300 went back");
    assert_eq!(balance(neighbour).await, (Some(2 * FUNDING), Some(0)));
    let _ = router;
    let record = vec![
        ("spent-meanwhile".to_owned(), body, outcome),
        ("spend-all".to_owned(), all, refused),
        ("spend-own".to_owned(), own, spent),
        // the proof wants a saga that posted, too
        ("crossing".to_owned(), transfer_body("crossing", neighbour, &work.users[3], 5, "IDR"), Final::Unknown),
    ];
    verify(&work, record, 2).await;
}

/// The saga log of a key, read from its home shard's database.
async fn saga_of(cluster: &ProcCluster, key: &str) -> Value {
    let home = cluster.config.ring().shard_for_key(cluster.tenant, key);
    let db = sqlx::PgPool::connect(&cluster.config.shards[home as usize].database_url).await.unwrap();
    let (saga_id, state, steps): (uuid::Uuid, String, Value) =
        sqlx::query_as("select saga_id, state, steps from ledger_saga where tenant_id = $1 and idempotency_key = $2")
            .bind(cluster.tenant)
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    json!({"saga_id": saga_id, "state": state, "steps": steps})
}

/// How many journal rows carry `ledger_tx_id` on `shard`.
async fn legs_with_id(cluster: &ProcCluster, shard: usize, ledger_tx_id: uuid::Uuid) -> i64 {
    let db = sqlx::PgPool::connect(&cluster.config.shards[shard].database_url).await.unwrap();
    let count = sqlx::query_scalar("select count(*) from ledger_transaction where ledger_tx_id = $1")
        .bind(ledger_tx_id)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    count
}

#[tokio::test]
async fn postgres_crashed_and_restarted_under_load_loses_and_duplicates_nothing() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, true).await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    work.cluster.postgres.as_ref().expect("private server").crash_and_restart();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let record = stop_load(stop, load).await;
    verify(&work, record, 10).await;
}

#[tokio::test]
async fn nats_restarted_under_load_loses_and_duplicates_nothing() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, false).await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    work.cluster.nats.restart().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let record = stop_load(stop, load).await;
    verify(&work, record, 10).await;
}

#[tokio::test]
async fn a_second_node_for_owned_shards_cannot_write() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, false).await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 4, stop.clone());
    let second = work.cluster.start_node(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = work.cluster.node_exit(second) {
            break status;
        }
        assert!(Instant::now() < deadline, "the second node kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = work.cluster.node_log(second);
    assert!(log.contains("owned by another writer"), "{log}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = stop_load(stop, load).await;
    verify(&work, record, 10).await;
}

#[tokio::test]
async fn every_internal_write_delivered_twice_under_load_posts_once() {
    let work = setup(ProcCluster::start(BINARY, SHARDS, false).await).await;
    // A second copy of every write a router sends to a shard, a little later (so also out
    // of order with what follows it), its answer going nowhere: posts, claims,
    // completions, saga openings, steps, undos and progress records all arrive twice.
    let client = work.cluster.client.clone();
    let mut messages = client.subscribe("ledger.internal.v1.shard.*").await.unwrap();
    let duplicated = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = duplicated.clone();
    let duplicator = tokio::spawn(async move {
        use futures::StreamExt;
        let mut delay = Tiny(7);
        while let Some(message) = messages.next().await {
            let is_copy = message.headers.as_ref().is_some_and(|h| h.get("Ledger-Test-Copy").is_some());
            let is_write = message.payload.starts_with(b"{\"write");
            if is_copy || !is_write {
                continue;
            }
            let client = client.clone();
            let pause = Duration::from_millis(delay.next(30) as u64);
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Ledger-Test-Copy", "1");
                let sink = client.new_inbox();
                let _ = client.publish_with_reply_and_headers(message.subject, sink, headers, message.payload).await;
            });
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&work, 6, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let record = stop_load(stop, load).await;
    duplicator.abort();
    eprintln!("internal writes delivered twice: {}", duplicated.load(Ordering::SeqCst));
    assert!(duplicated.load(Ordering::SeqCst) > 100);
    verify(&work, record, 10).await;
}
