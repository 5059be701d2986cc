//! A cluster of real processes for the fault-injection tests: nodes and routers run as
//! child processes (the `ledger-proc` binary) that a test can SIGKILL and start again, on
//! a private nats-server that can be restarted on the same port, and optionally on a
//! private PostgreSQL server that can be crashed and restarted.

use crate::{NatsServer, Reply, cluster_toml, pg_server_url};
use ledger_config::ClusterConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A private PostgreSQL server in a temporary directory, so that a test can crash and
/// restart it without touching the databases of tests running beside it.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_postgres_user: bool,
}

fn newest_pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()));
    found.pop().expect("PostgreSQL server binaries under /usr/lib/postgresql/<version>/bin (scripts/env.sh installs them)")
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = newest_pg_bin();
        let port = crate::free_port();
        let data = std::env::temp_dir().join(format!("ledger-test-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).expect("create the data directory");
        // PostgreSQL refuses to run as root: run it as the postgres user then
        let as_postgres_user = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        if as_postgres_user {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data));
        }
        let server = PrivatePostgres { bin, data, port, as_postgres_user };
        let data_dir = server.data.join("db");
        let mut initdb = server.command("initdb");
        initdb.args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data_dir);
        run(&mut initdb);
        std::fs::write(
            data_dir.join("postgresql.auto.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = on\n\
             synchronous_commit = on\nshared_buffers = '64MB'\nmax_connections = 60\n",
                server.data.display()
            ),
        )
        .expect("write the server settings");
        if as_postgres_user {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&server.data));
        }
        server.pg_ctl(&["start"]);
        server
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data.join("db")).arg("-l").arg(self.data.join("server.log")).arg("-w").args(args);
        run(&mut command);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the server as a crash would (no shutdown checkpoint; WAL recovery on start)
    /// and starts it again.
    pub fn crash_and_restart(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
        self.pg_ctl(&["start"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data.join("db")).args(["-m", "immediate", "-w", "stop"]);
        let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// SIGKILL (what `Child::kill` sends on Unix): no shutdown code of ours runs.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Nodes and routers as processes.
pub struct ProcCluster {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub tenant: Uuid,
    pub config: ClusterConfig,
    pub config_path: PathBuf,
    pub postgres: Option<PrivatePostgres>,
    pub logs: PathBuf,
    binary: PathBuf,
    nodes: Mutex<Vec<Child>>,
    routers: Mutex<Vec<Child>>,
    started: AtomicU32,
}

impl ProcCluster {
    /// `shards` shards on one node; on a private PostgreSQL server if `private_postgres`.
    pub async fn start(binary: &str, shards: usize, private_postgres: bool) -> ProcCluster {
        let cluster = ProcCluster::prepare(binary, shards, private_postgres).await;
        cluster.start_node(&[]);
        cluster.wait_for_node().await;
        cluster.start_router(&[]).await;
        cluster
    }

    /// `shards` shards on one node whose process also runs the router, as
    /// `ledger-router --node` does; the process counts as a router (`kill_router`).
    pub async fn start_beside(binary: &str, shards: usize) -> ProcCluster {
        let cluster = ProcCluster::prepare(binary, shards, false).await;
        cluster.start_router_beside().await;
        cluster
    }

    async fn prepare(binary: &str, shards: usize, private_postgres: bool) -> ProcCluster {
        let nats = NatsServer::start().await;
        let postgres = private_postgres.then(PrivatePostgres::start);
        let server = postgres.as_ref().map_or_else(pg_server_url, PrivatePostgres::url);
        let name = format!("ledger_proc_{}_{}", std::process::id(), &Uuid::new_v4().simple().to_string()[..8]);
        let urls: Vec<String> = (0..shards).map(|i| format!("{server}/{name}_s{i}")).collect();
        let text = cluster_toml(&name, &nats.url, &urls);
        let logs = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&logs).expect("log directory");
        let config_path = logs.join("cluster.toml");
        std::fs::write(&config_path, &text).expect("write the config");
        let config = ClusterConfig::parse(&text, "test").expect("test config");
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&nats.url)
            .await
            .expect("connect to the test nats-server");
        ProcCluster {
            nats,
            client,
            tenant: Uuid::new_v4(),
            config,
            config_path,
            postgres,
            logs,
            binary: PathBuf::from(binary),
            nodes: Mutex::default(),
            routers: Mutex::default(),
            started: AtomicU32::new(0),
        }
    }

    fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let log = self.logs.join(format!("{}-{number}.log", args[0]));
        let file = std::fs::File::create(&log).expect("log file");
        Command::new(&self.binary)
            .args(args)
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()))
    }

    /// Starts a node process for all shards; does not wait for it.
    pub fn start_node(&self, env: &[(&str, &str)]) -> usize {
        let config = self.config_path.to_string_lossy().into_owned();
        let child = self.spawn(&["node", &config, "node-0"], env);
        let mut nodes = self.nodes.lock().expect("not poisoned");
        nodes.push(child);
        nodes.len() - 1
    }

    /// Waits until every shard answers on its internal subject.
    pub async fn wait_for_node(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for shard in &self.config.shards {
            let body = serde_json::to_vec(&ledger_protocol::internal::ShardRequest::Audit).unwrap();
            loop {
                let ask = self.client.request(ledger_protocol::subject::shard_subject(shard.id), body.clone().into());
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
                    break;
                }
                assert!(Instant::now() < deadline, "shard {} did not come up; logs in {}", shard.id, self.logs.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Starts a router process running beside node `node-0` and waits until its shards
    /// and the router answer.
    pub async fn start_router_beside(&self) -> usize {
        let config = self.config_path.to_string_lossy().into_owned();
        let index = self.add_router(self.spawn(&["router", &config, "node-0"], &[])).await;
        self.wait_for_node().await;
        index
    }

    /// Starts a router process and waits until some router answers `$SRV.PING.ledger`.
    pub async fn start_router(&self, env: &[(&str, &str)]) -> usize {
        let config = self.config_path.to_string_lossy().into_owned();
        self.add_router(self.spawn(&["router", &config], env)).await
    }

    async fn add_router(&self, child: Child) -> usize {
        let index = {
            let mut routers = self.routers.lock().expect("not poisoned");
            routers.push(child);
            routers.len() - 1
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = self.client.request("$SRV.PING.ledger", "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), reply).await {
                break;
            }
            assert!(Instant::now() < deadline, "the router did not answer; logs in {}", self.logs.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        index
    }

    pub fn kill_node(&self, index: usize) {
        kill(&mut self.nodes.lock().expect("not poisoned")[index]);
    }

    pub fn kill_router(&self, index: usize) {
        kill(&mut self.routers.lock().expect("not poisoned")[index]);
    }

    /// The exit status of a node process, if it has exited.
    pub fn node_exit(&self, index: usize) -> Option<std::process::ExitStatus> {
        self.nodes.lock().expect("not poisoned")[index].try_wait().ok().flatten()
    }

    pub fn node_log(&self, index: usize) -> String {
        // node logs are numbered by start order; find the one of this node
        let mut logs: Vec<PathBuf> =
            std::fs::read_dir(&self.logs).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
        logs.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("node-")));
        logs.sort_by_key(|p| {
            p.file_stem().and_then(|n| n.to_str()).and_then(|n| n.trim_start_matches("node-").parse::<u32>().ok())
        });
        logs.get(index).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    pub async fn call(&self, operation: &str, body: &Value, timeout: Duration) -> Option<Reply> {
        let subject = format!("ledger.v1.{}.{operation}", self.tenant.hyphenated());
        let ask = self.client.request(subject, serde_json::to_vec(body).unwrap().into());
        let message = tokio::time::timeout(timeout, ask).await.ok()?.ok()?;
        let body: Value = serde_json::from_slice(&message.payload).ok()?;
        let error_header = message.headers.as_ref().and_then(|h| {
            Some((h.get("Nats-Service-Error")?.as_str().to_owned(), h.get("Nats-Service-Error-Code")?.as_str().to_owned()))
        });
        Some(Reply { body, error_header })
    }

    pub async fn audit(&self) -> Option<Value> {
        let ask = self.client.request("ledger.v1.admin.audit", "{}".into());
        let message = tokio::time::timeout(Duration::from_secs(20), ask).await.ok()?.ok()?;
        serde_json::from_slice(&message.payload).ok()
    }

    pub fn config_file(&self) -> &Path {
        &self.config_path
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let nodes = self.nodes.get_mut().expect("not poisoned");
        for child in nodes.iter_mut() {
            kill(child);
        }
        for child in self.routers.get_mut().expect("not poisoned").iter_mut() {
            kill(child);
        }
        if self.postgres.is_none() {
            // the databases live on the shared server: drop them
            let names: Vec<String> =
                self.config.shards.iter().map(|s| s.database_url.rsplit('/').next().unwrap_or_default().to_owned()).collect();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    use sqlx::Executor;
                    let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", pg_server_url())).await else { return };
                    for name in names {
                        let _ =
                            admin.execute(sqlx::AssertSqlSafe(format!("drop database if exists \"{name}\" with (force)"))).await;
                    }
                });
            })
            .join();
        }
        if std::thread::panicking() {
            eprintln!("process logs kept in {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}
