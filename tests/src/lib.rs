//! Test harness: a real cluster (node + router in-process) on a private nats-server and
//! private databases, and a client that speaks the public protocol.

use ledger_config::ClusterConfig;
use ledger_node::server::NodeHandles;
use ledger_node::shard::FaultHooks;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub mod procs;

pub fn pg_server_url() -> String {
    std::env::var("LEDGER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A private nats-server with JetStream; killed on drop.
pub struct NatsServer {
    child: std::sync::Mutex<Child>,
    pub url: String,
    pub port: u16,
    store_dir: std::path::PathBuf,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = free_port();
        let store_dir = std::env::temp_dir().join(format!("ledger-test-nats-{}-{port}", std::process::id()));
        let child = NatsServer::spawn(port, &store_dir).await;
        NatsServer { child: std::sync::Mutex::new(child), url: format!("nats://127.0.0.1:{port}"), port, store_dir }
    }

    async fn spawn(port: u16, store_dir: &std::path::Path) -> Child {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e} (set NATS_SERVER_BIN or put nats-server on PATH)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store: clients
    /// reconnect, JetStream keeps its streams.
    pub async fn restart(&self) {
        {
            let mut child = self.child.lock().expect("not poisoned");
            let _ = child.kill();
            let _ = child.wait();
        }
        let fresh = NatsServer::spawn(self.port, &self.store_dir).await;
        *self.child.lock().expect("not poisoned") = fresh;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let child = self.child.get_mut().expect("not poisoned");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// A reply as a client sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Value,
    /// `Nats-Service-Error` (the code) and `Nats-Service-Error-Code` (the status).
    pub error_header: Option<(String, String)>,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.error_header.is_none() && self.body.get("error").is_none()
    }

    pub fn code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }

    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(self.is_ok(), "expected success, got {}", self.body);
        self.body
    }

    /// Asserts the failure's code in the body and in both headers; returns the error object.
    #[track_caller]
    pub fn err(self, code: &str, status: u16) -> Value {
        assert_eq!(self.code(), Some(code), "reply: {}", self.body);
        let (header_code, header_status) = self.error_header.clone().expect("an error reply carries service headers");
        assert_eq!(header_code, code);
        assert_eq!(header_status, status.to_string());
        self.body["error"].clone()
    }
}

static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Cluster {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub tenant: Uuid,
    pub config: ClusterConfig,
    pub faults: HashMap<u16, Arc<FaultHooks>>,
    node: Option<(tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
    router: Option<(tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
    /// The node the router runs beside, if it does ([`router_beside_a_node`]); the other
    /// node, if any, is `node`.
    beside: Option<&'static str>,
}

pub fn cluster_toml(name: &str, nats_url: &str, database_urls: &[String]) -> String {
    let mut text = format!(
        "[cluster]\nname = \"{name}\"\nnats_url = \"{nats_url}\"\n[ring]\nvirtual_nodes_per_shard = 128\n\
         [limits]\nrequest_timeout_ms = 5000\n\
         saga_resume_after_ms = 1500\nsaga_recovery_interval_ms = 250\n"
    );
    for (id, url) in database_urls.iter().enumerate() {
        text.push_str(&format!("[[shards]]\nid = {id}\ndatabase_url = \"{url}\"\npool_size = 4\n"));
    }
    let ids: Vec<String> = (0..database_urls.len()).map(|i| i.to_string()).collect();
    text.push_str(&format!("[[nodes]]\nname = \"node-0\"\nshards = [{}]\n", ids.join(", ")));
    text
}

/// Whether the test clusters run their router beside a node, as `ledger-router --node`
/// does: `LEDGER_TEST_ROUTER_BESIDE=1`. Their shards are then split over two nodes, the
/// router reaching the first node's shards in-process and the second's over NATS.
pub fn router_beside_a_node() -> bool {
    std::env::var("LEDGER_TEST_ROUTER_BESIDE").is_ok_and(|v| v == "1")
}

/// Splits the shards of a [`cluster_toml`] text over two nodes, `node-0` and `node-1`.
pub fn two_nodes(toml: &str, shards: usize) -> String {
    let (text, _) = toml.split_once("[[nodes]]").expect("a cluster toml names its node");
    let ids = |range: std::ops::Range<usize>| range.map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let half = shards.div_ceil(2);
    format!(
        "{text}[[nodes]]\nname = \"node-0\"\nshards = [{}]\n[[nodes]]\nname = \"node-1\"\nshards = [{}]\n",
        ids(0..half),
        ids(half..shards)
    )
}

/// How many shards the foundation tests run on: `LEDGER_TEST_SHARDS`, 1 by default.
/// `scripts/test.sh` runs them on 1 shard and again on 4, where most of their transfers
/// cross shards and run as sagas.
pub fn foundation_shards() -> usize {
    std::env::var("LEDGER_TEST_SHARDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

impl Cluster {
    /// A cluster for a test of docs/PROTOCOL.md's promises, which must hold whatever the number
    /// of shards ([`foundation_shards`]).
    pub async fn foundation() -> Cluster {
        Cluster::start(foundation_shards()).await
    }

    pub async fn start(shards: usize) -> Cluster {
        Cluster::start_tuned(shards, |toml| toml).await
    }

    /// A cluster whose config text `tune` may change first (limits, for instance).
    pub async fn start_tuned(shards: usize, tune: impl FnOnce(String) -> String) -> Cluster {
        Cluster::start_with(shards, router_beside_a_node(), tune).await
    }

    /// A cluster whose router runs beside a node, whatever `LEDGER_TEST_ROUTER_BESIDE` says.
    pub async fn start_beside(shards: usize) -> Cluster {
        Cluster::start_with(shards, true, |toml| toml).await
    }

    async fn start_with(shards: usize, beside: bool, tune: impl FnOnce(String) -> String) -> Cluster {
        let nats = NatsServer::start().await;
        let name = format!(
            "ledger_test_{}_{}_{}",
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, Ordering::SeqCst),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let urls: Vec<String> = (0..shards).map(|i| format!("{}/{name}_s{i}", pg_server_url())).collect();
        let mut toml = cluster_toml(&name, &nats.url, &urls);
        let beside = beside.then_some("node-0");
        if beside.is_some() && shards > 1 {
            toml = two_nodes(&toml, shards);
        }
        Cluster::launch(nats, &tune(toml), beside).await
    }

    /// A cluster of the config text `toml` (its NATS URL must be `nats`'s), its router
    /// beside node `beside` if given, else alone; any other node named `node-0` or
    /// `node-1` runs on its own.
    async fn launch(nats: NatsServer, toml: &str, beside: Option<&'static str>) -> Cluster {
        let config = ClusterConfig::parse(toml, "test").expect("test config");
        let faults: HashMap<u16, Arc<FaultHooks>> = config.shards.iter().map(|s| (s.id, Arc::default())).collect();
        let client = async_nats::connect(&nats.url).await.expect("connect to the test nats-server");
        let mut cluster = Cluster { nats, client, tenant: Uuid::new_v4(), config, faults, node: None, router: None, beside };
        cluster.start_node().await;
        cluster.start_router().await;
        cluster
    }

    /// Starts the node the router does not run beside: `node-0`, or `node-1` when the
    /// router runs beside `node-0` (if the config has a `node-1`).
    pub async fn start_node(&mut self) {
        let name = match self.beside {
            None => "node-0",
            Some(_) if self.config.node("node-1").is_some() => "node-1",
            Some(_) => return,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
        let handles = NodeHandles { faults: self.faults.clone() };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = ready_tx.send(());
                let _ = stopped.await;
            };
            ledger_node::server::run(config, name, handles, shutdown).await.expect("node runs");
        });
        ready_rx.await.expect("node started");
        self.node = Some((task, stop));
    }

    pub async fn start_router(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
        let beside = self.beside;
        let handles = NodeHandles { faults: self.faults.clone() };
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            match beside {
                None => ledger_router::run(config, shutdown).await.expect("router runs"),
                Some(node_name) => {
                    ledger_launcher::run_with_node(config, node_name, handles, shutdown).await.expect("router and node run")
                }
            }
        });
        self.router = Some((task, stop));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.client.request("$SRV.PING.ledger", "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), reply).await {
                break;
            }
            assert!(Instant::now() < deadline, "the router did not answer $SRV.PING.ledger");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node (its actors and subscriptions) as a crash would leave things.
    pub async fn stop_node(&mut self) {
        if let Some((task, stop)) = self.node.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    pub async fn call_as(&self, tenant: Uuid, operation: &str, body: &Value) -> Reply {
        self.raw(&format!("ledger.v1.{}.{operation}", tenant.hyphenated()), serde_json::to_vec(body).unwrap()).await
    }

    pub async fn call(&self, operation: &str, body: Value) -> Reply {
        self.call_as(self.tenant, operation, &body).await
    }

    pub async fn raw(&self, subject: &str, payload: Vec<u8>) -> Reply {
        let message = tokio::time::timeout(Duration::from_secs(20), self.client.request(subject.to_owned(), payload.into()))
            .await
            .expect("a reply within 20 s")
            .expect("request delivered");
        let body: Value = serde_json::from_slice(&message.payload).expect("replies are JSON");
        let error_header = message.headers.as_ref().and_then(|h| {
            let code = h.get("Nats-Service-Error")?.as_str().to_owned();
            let status = h.get("Nats-Service-Error-Code")?.as_str().to_owned();
            Some((code, status))
        });
        Reply { body, error_header }
    }

    /// Sends one internal message straight to a shard's subject, as a router would (or
    /// anyone else who can reach it).
    pub async fn to_shard(
        &self,
        shard: u16,
        request: &ledger_protocol::internal::ShardRequest,
    ) -> ledger_protocol::internal::ShardReply {
        let subject = ledger_protocol::subject::shard_subject(shard);
        let reply = self.client.request(subject, serde_json::to_vec(request).unwrap().into()).await.expect("a shard answers");
        serde_json::from_slice(&reply.payload).expect("shard replies are JSON")
    }

    /// `n` account codes starting with `tag` that the ring places on `shard`.
    pub fn codes_on(&self, shard: u16, tag: &str, n: usize) -> Vec<String> {
        codes_on(&self.config.ring(), self.tenant, shard, tag, n)
    }

    /// `ledger.v1.admin.audit`.
    pub async fn audit(&self) -> Value {
        self.raw("ledger.v1.admin.audit", b"{}".to_vec()).await.ok()
    }

    pub async fn create_account(&self, code: &str, account_type: &str, currency: &str, allow_negative: bool) -> Value {
        self.call(
            "accounts.create",
            json!({"code": code, "type": account_type, "currency": currency, "allow_negative": allow_negative}),
        )
        .await
        .ok()
    }

    pub async fn transfer(&self, key: &str, from: &str, to: &str, amount_minor: i64, currency: &str) -> Reply {
        self.call("transactions.post", transfer_body(key, from, to, amount_minor, currency)).await
    }

    pub async fn balance(&self, code: &str) -> i64 {
        let account = self.call("accounts.get", json!({"account_code": code})).await.ok();
        account["balance"]["balance_minor"].as_i64().expect("balance")
    }

    /// A full statement, following cursors.
    pub async fn statement(&self, code: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let page = self.call("accounts.statement", json!({"account_code": code, "limit": 1000, "cursor": cursor})).await.ok();
            entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
            cursor = page["next_cursor"].clone();
            if cursor.is_null() {
                return entries;
            }
        }
    }

    pub async fn db(&self, shard: usize) -> PgPool {
        PgPoolOptions::new().max_connections(2).connect(&self.config.shards[shard].database_url).await.expect("connect shard db")
    }

    /// Counts of every table that a write can touch, over all shards: equal before and
    /// after a refused request means nothing was written.
    pub async fn footprint(&self) -> Vec<i64> {
        let mut counts = Vec::new();
        for shard in 0..self.config.shards.len() {
            let db = self.db(shard).await;
            for table in [
                "ledger_account",
                "ledger_transaction",
                "ledger_entry",
                "ledger_idempotency",
                "ledger_external_ref",
                "ledger_reversal",
                "ledger_account_status_change",
                "ledger_outbox",
            ] {
                let sql = format!("select count(*) from {table}");
                counts.push(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&db).await.expect("count"));
            }
            let balances: i64 = sqlx::query_scalar("select coalesce(sum(version), 0)::int8 from account_balance")
                .fetch_one(&db)
                .await
                .expect("versions");
            counts.push(balances);
            db.close().await;
        }
        counts
    }

    /// Stops everything and drops the test databases.
    pub async fn finish(mut self) {
        if let Some((task, stop)) = self.router.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        self.stop_node().await;
        let admin = PgPoolOptions::new().max_connections(1).connect(&format!("{}/postgres", pg_server_url())).await;
        if let Ok(admin) = admin {
            for shard in &self.config.shards {
                let name = shard.database_url.rsplit('/').next().unwrap_or_default().to_owned();
                let sql = format!("drop database if exists \"{name}\" with (force)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
            }
        }
    }
}

/// `n` account codes of `tenant` starting with `tag` that `ring` places on `shard`.
pub fn codes_on(ring: &ledger_core::ring::HashRing, tenant: Uuid, shard: u16, tag: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .filter(|code| ring.shard_for_account(ledger_core::ids::account_id(tenant, code)) == shard)
        .take(n)
        .collect()
}

pub fn transfer_body(key: &str, from: &str, to: &str, amount_minor: i64, currency: &str) -> Value {
    json!({
        "idempotency_key": key,
        "type": "TRANSFER",
        "actor": "test",
        "entries": [
            {"account_code": from, "side": "DEBIT", "amount_minor": amount_minor, "currency": currency},
            {"account_code": to, "side": "CREDIT", "amount_minor": amount_minor, "currency": currency},
        ],
    })
}
