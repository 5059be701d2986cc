//! A node process: for each shard it owns, the shard writer actor, a read pool, the
//! subscription on the shard's internal subject and the outbox relay.

use crate::outbox;
use crate::shard::{FaultHooks, ShardArgs, ShardMsg, WriteFailure};
use crate::store;
use crate::supervisor::{ShardSupervisor, SupervisorArgs, SupervisorMsg, WriterSlot};
use anyhow::Context;
use futures::StreamExt;
use ledger_config::{ClusterConfig, ShardConfig};
use ledger_core::batch::Outcome;
use ledger_core::command::Command;
use ledger_core::ids::{is_saga_id, shard_of_ledger_id};
use ledger_core::rejection::Rejection;
use ledger_core::saga::SagaState;
use ledger_protocol::internal::{ClaimAnswer, Redirect, ShardReply, ShardRequest, TransactionLookup};
use ledger_protocol::reply::PostReply;
use ractor::{Actor, ActorRef};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};
use uuid::Uuid;

/// What a running node exposes to tests.
#[derive(Clone, Default)]
pub struct NodeHandles {
    pub faults: HashMap<u16, Arc<FaultHooks>>,
}

struct ShardRuntime {
    shard_id: u16,
    writers: Arc<WriterSlot>,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_join: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pool: PgPool,
    queue: Semaphore,
    request_timeout: Duration,
}

/// Creates the shard's database if the server does not have it yet.
pub async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    store::ensure_database(database_url).await.with_context(|| format!("create the database of {database_url}"))
}

/// The PostgreSQL server a shard's database lives on, as far as its URL tells.
fn database_server(database_url: &str) -> anyhow::Result<(String, u16)> {
    let options = PgConnectOptions::from_str(database_url).context("parse database_url")?;
    Ok((options.get_host().to_owned(), options.get_port()))
}

async fn start_shard(
    config: &ClusterConfig,
    shard: &ShardConfig,
    server_gate: Arc<Semaphore>,
    faults: Arc<FaultHooks>,
) -> anyhow::Result<Arc<ShardRuntime>> {
    ensure_database(&shard.database_url).await?;
    let args = ShardArgs {
        shard_id: shard.id,
        database_url: shard.database_url.clone(),
        batch_commands_max: config.limits.batch_commands_max,
        account_cache_max: config.limits.account_cache_max,
        server_gate,
        faults,
    };
    let writers = Arc::new(WriterSlot::default());
    let supervised = SupervisorArgs { writer: args, slot: writers.clone() };
    let (supervisor, supervisor_join) = Actor::spawn(None, ShardSupervisor, supervised)
        .await
        .map_err(|e| anyhow::anyhow!("shard {} writer did not start: {e}", shard.id))?;
    let pool = PgPoolOptions::new()
        .max_connections(shard.pool_size.saturating_sub(1).max(1))
        .acquire_timeout(Duration::from_secs(5))
        .connect(&shard.database_url)
        .await?;
    Ok(Arc::new(ShardRuntime {
        shard_id: shard.id,
        writers,
        supervisor,
        supervisor_join: std::sync::Mutex::new(Some(supervisor_join)),
        pool,
        queue: Semaphore::new(config.limits.shard_queue_commands_max),
        request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
    }))
}

/// Runs node `node_name` of `config` until `shutdown` resolves.
pub async fn run(
    config: ClusterConfig,
    node_name: &str,
    handles: NodeHandles,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = start(&config, node_name, handles).await?;
    shutdown.await;
    node.stop().await;
    Ok(())
}

/// A started node: its shards serve on NATS until [`RunningNode::stop`].
pub struct RunningNode {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local: LocalShards,
}

/// The shards of a node, reachable in-process. A router in the node's process
/// (`ledger-router --node`, composed by the launcher) hands its requests for these shards straight to them instead
/// of over NATS: the same handling, without the two NATS hops and the JSON encoding
/// of commands and replies that a router in another process pays for each batch.
#[derive(Clone, Default)]
pub struct LocalShards(Arc<HashMap<u16, Arc<ShardRuntime>>>);

impl LocalShards {
    /// The shard, if this node owns it.
    pub fn get(&self, shard_id: u16) -> Option<LocalShard> {
        self.0.get(&shard_id).cloned().map(LocalShard)
    }
}

/// One shard of this process's node.
pub struct LocalShard(Arc<ShardRuntime>);

impl LocalShard {
    /// What the shard answers to `request`.
    pub async fn request(self, request: ShardRequest) -> ShardReply {
        handle(&self.0, request).await
    }

    /// One reply per command, in order, committed in one batch as a `WriteBatch` message
    /// would be.
    pub async fn write(self, commands: Vec<Command>) -> Vec<ShardReply> {
        write(&self.0, commands).await
    }
}

/// Starts node `node_name` of `config`: its shard writers, their NATS subscriptions and
/// their outbox relays.
pub async fn start(config: &ClusterConfig, node_name: &str, handles: NodeHandles) -> anyhow::Result<RunningNode> {
    let node = config.node(node_name).with_context(|| format!("no node named {node_name:?} in the cluster config"))?.clone();
    let client = async_nats::ConnectOptions::new()
        .name(format!("ledger-node {node_name}"))
        .connect(&config.cluster.nats_url)
        .await
        .with_context(|| format!("connect to NATS at {}", config.cluster.nats_url))?;
    outbox::ensure_stream(&client).await?;
    let mut tasks = Vec::new();
    let mut runtimes = HashMap::new();
    let mut server_gates: HashMap<(String, u16), Arc<Semaphore>> = HashMap::new();
    let turns = config.limits.batches_in_flight_per_database_server.unwrap_or(Semaphore::MAX_PERMITS);
    for shard_id in &node.shards {
        let shard = config.shard(*shard_id).expect("config checked");
        let faults = handles.faults.get(shard_id).cloned().unwrap_or_default();
        let server_gate =
            server_gates.entry(database_server(&shard.database_url)?).or_insert_with(|| Arc::new(Semaphore::new(turns))).clone();
        let runtime = start_shard(config, shard, server_gate, faults).await?;
        let subscription = client
            .subscribe(ledger_protocol::subject::shard_subject(*shard_id))
            .await
            .map_err(|e| anyhow::anyhow!("subscribe for shard {shard_id}: {e}"))?;
        runtimes.insert(*shard_id, runtime.clone());
        let serve_client = client.clone();
        let serve_runtime = runtime.clone();
        tasks.push(tokio::spawn(async move { serve(serve_client, serve_runtime, subscription).await }));
        tasks.push(tokio::spawn(outbox::relay(client.clone(), runtime.pool.clone(), *shard_id)));
        info!(node = node_name, shard_id, "shard serving");
    }
    client.flush().await.ok();
    Ok(RunningNode { tasks, local: LocalShards(Arc::new(runtimes)) })
}

impl RunningNode {
    pub fn local_shards(&self) -> LocalShards {
        self.local.clone()
    }

    /// Stops serving, then stops each shard's writer (its fence is released with its
    /// connection) and closes its pool.
    pub async fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
        for runtime in self.local.0.values() {
            runtime.writers.begin_shutdown();
            if let Some(writer) = runtime.writers.writer() {
                let _ = writer.stop_and_wait(Some("node shutting down".into()), Some(Duration::from_secs(10))).await;
            }
            runtime.supervisor.stop(Some("node shutting down".into()));
            let join = runtime.supervisor_join.lock().expect("not poisoned").take();
            if let Some(join) = join {
                let _ = join.await;
            }
            runtime.pool.close().await;
        }
    }
}

async fn serve(client: async_nats::Client, runtime: Arc<ShardRuntime>, mut subscription: async_nats::Subscriber) {
    while let Some(message) = subscription.next().await {
        let Some(reply_to) = message.reply.clone() else { continue };
        let client = client.clone();
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<ShardRequest>(&message.payload) {
                Ok(request) => handle(&runtime, request).await,
                Err(error) => ShardReply::internal(&format!("malformed internal request: {error}")),
            };
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            if let Err(error) = client.publish(reply_to, body.into()).await {
                warn!(shard_id = runtime.shard_id, %error, "cannot send a shard reply");
            }
        });
    }
}

fn store_failure(shard_id: u16, error: store::StoreError) -> ShardReply {
    error!(shard_id, %error, "shard read failed");
    ShardReply::unavailable(&format!("shard {shard_id} cannot be read right now"))
}

async fn handle(runtime: &ShardRuntime, request: ShardRequest) -> ShardReply {
    let shard_id = runtime.shard_id;
    match request {
        ShardRequest::Write { command } => write(runtime, vec![*command]).await.pop().expect("one reply per write"),
        ShardRequest::WriteBatch { commands } => ShardReply::Batch(write(runtime, commands).await),
        ShardRequest::GetAccount { tenant_id, account_id } => {
            match store::account_object(&runtime.pool, tenant_id, account_id).await {
                Ok(Some(account)) => ShardReply::ok(&account),
                Ok(None) => ShardReply::rejected(&Rejection::AccountNotFound { account_id: Some(account_id) }),
                Err(error) => store_failure(shard_id, error),
            }
        }
        ShardRequest::Statement { tenant_id, query } => {
            match store::account_exists(&runtime.pool, tenant_id, query.account_id).await {
                Ok(true) => {}
                Ok(false) => return ShardReply::rejected(&Rejection::AccountNotFound { account_id: Some(query.account_id) }),
                Err(error) => return store_failure(shard_id, error),
            }
            match store::statement(&runtime.pool, tenant_id, &query).await {
                Ok(statement) => ShardReply::ok(&statement),
                Err(error) => store_failure(shard_id, error),
            }
        }
        ShardRequest::GetTransaction { tenant_id, by } => match get_transaction(runtime, tenant_id, by).await {
            Ok(reply) => reply,
            Err(error) => store_failure(shard_id, error),
        },
        ShardRequest::PostReply { tenant_id, ledger_tx_id } => client_replay(runtime, tenant_id, ledger_tx_id).await,
        ShardRequest::AccountFacts { tenant_id, account_ids } => {
            match store::account_facts(&runtime.pool, tenant_id, &account_ids).await {
                Ok(facts) => ShardReply::ok(&facts),
                Err(error) => store_failure(shard_id, error),
            }
        }
        ShardRequest::GetSaga { tenant_id, saga_id } => match store::saga(&runtime.pool, tenant_id, saga_id).await {
            Ok(Some(record)) => ShardReply::ok(&record),
            Ok(None) => ShardReply::rejected(&Rejection::TransactionNotFound),
            Err(error) => store_failure(shard_id, error),
        },
        ShardRequest::StaleSagas { idle_ms, limit } => {
            match store::sagas_in_flight(&runtime.pool, idle_ms as i64, limit as i64).await {
                Ok(records) => ShardReply::ok(&records),
                Err(error) => store_failure(shard_id, error),
            }
        }
        ShardRequest::StaleClaims { idle_ms, limit } => {
            let stale = async {
                let mut conn = runtime.pool.acquire().await?;
                store::stale_claims(&mut conn, idle_ms as i64, limit as i64).await
            };
            match stale.await {
                Ok(claims) => ShardReply::ok(&claims),
                Err(error) => store_failure(shard_id, error),
            }
        }
        ShardRequest::GetLeg { tenant_id, ledger_tx_id } => {
            let leg = async {
                let mut conn = runtime.pool.acquire().await?;
                store::transaction_object(&mut conn, tenant_id, ledger_tx_id).await
            };
            match leg.await {
                Ok(Some(tx)) => ShardReply::ok(&tx),
                Ok(None) => ShardReply::rejected(&Rejection::TransactionNotFound),
                Err(error) => store_failure(shard_id, error),
            }
        }
        ShardRequest::RebuildBalances => {
            let Some(writer) = runtime.writers.writer() else {
                return ShardReply::unavailable(&format!("shard {shard_id} writer is restarting; retry"));
            };
            match ractor::call!(writer, ShardMsg::RebuildBalances) {
                Ok(Ok(corrected)) => ShardReply::ok(&ledger_protocol::internal::RebuiltBalances {
                    shard_id,
                    corrected_count: corrected.len() as i64,
                    corrected: corrected.into_iter().take(100).collect(),
                }),
                Ok(Err(WriteFailure::Unavailable(message))) => ShardReply::unavailable(&message),
                Ok(Err(WriteFailure::Internal(message))) => ShardReply::internal(&message),
                Err(error) => ShardReply::unavailable(&format!("shard {shard_id} writer did not answer: {error}")),
            }
        }
        ShardRequest::Audit => {
            let audit = async {
                let mut conn = runtime.pool.acquire().await?;
                store::audit(&mut conn, shard_id).await
            };
            match audit.await {
                Ok(audit) => ShardReply::ok(&audit),
                Err(error) => store_failure(shard_id, error),
            }
        }
    }
}

/// The reply a client's retry gets for a key that posted: a saga's stored reply when the
/// id is a saga whose log is here, else the post or reversal rebuilt from the journal.
async fn client_replay(runtime: &ShardRuntime, tenant_id: Uuid, ledger_tx_id: Uuid) -> ShardReply {
    if is_saga_id(ledger_tx_id) {
        match store::saga(&runtime.pool, tenant_id, ledger_tx_id).await {
            Ok(saga) => {
                if let Some(mut reply) = saga.and_then(|s| s.reply) {
                    reply["replayed"] = serde_json::json!(true);
                    return ShardReply::posted(ledger_tx_id, &reply);
                }
            }
            Err(error) => return store_failure(runtime.shard_id, error),
        }
    }
    replay(runtime, tenant_id, ledger_tx_id).await
}

async fn replay(runtime: &ShardRuntime, tenant_id: Uuid, ledger_tx_id: Uuid) -> ShardReply {
    let reply = async {
        let mut conn = runtime.pool.acquire().await?;
        store::post_reply(&mut conn, tenant_id, ledger_tx_id).await
    };
    match reply.await {
        Ok(Some(reply)) => ShardReply::posted(ledger_tx_id, &reply),
        // A key names its own tenant's transaction, so it is there: never answer a replay
        // with a refusal a router would take for one that consumes no key. Asked for
        // another tenant's transaction, the shard tells nothing about it.
        Ok(None) => ShardReply::internal("the replayed transaction is not in this tenant's journal"),
        Err(error) => store_failure(runtime.shard_id, error),
    }
}

async fn get_transaction(
    runtime: &ShardRuntime,
    tenant_id: Uuid,
    by: TransactionLookup,
) -> Result<ShardReply, store::StoreError> {
    let id = match by {
        TransactionLookup::Id(id) => Some(id),
        TransactionLookup::IdempotencyKey(key) => match store::lookup_key(&runtime.pool, tenant_id, &key).await? {
            store::KeyLookup::Transaction(id) => Some(id),
            store::KeyLookup::DecidedOn(shard_id) => return Ok(ShardReply::Redirect(Redirect::KeyOnShard { shard_id })),
            store::KeyLookup::Nothing => None,
        },
        TransactionLookup::ExternalRef(external_ref) => {
            store::tx_id_by_external_ref(&runtime.pool, tenant_id, &external_ref).await?
        }
    };
    let Some(id) = id else { return Ok(ShardReply::rejected(&Rejection::TransactionNotFound)) };
    if shard_of_ledger_id(id) != Some(runtime.shard_id) {
        return Ok(ShardReply::Redirect(Redirect::Transaction { ledger_tx_id: id }));
    }
    // A saga's log is on the shard its id names; its legs are elsewhere.
    if is_saga_id(id) {
        match store::saga(&runtime.pool, tenant_id, id).await? {
            Some(record) if record.state == SagaState::Posted => {
                return Ok(ShardReply::Redirect(Redirect::Saga { record: Box::new(record) }));
            }
            Some(_) => return Ok(ShardReply::rejected(&Rejection::TransactionNotFound)),
            // an id minted before saga ids were flagged: an ordinary transaction
            None => {}
        }
    }
    let mut conn = runtime.pool.acquire().await?;
    Ok(match store::transaction_object(&mut conn, tenant_id, id).await? {
        Some(tx) => ShardReply::ok(&tx),
        None => ShardReply::rejected(&Rejection::TransactionNotFound),
    })
}

/// Hands writes to the shard writer in one message, so that they commit in one batch, and
/// turns each outcome into the reply its caller gets.
async fn write(runtime: &ShardRuntime, commands: Vec<Command>) -> Vec<ShardReply> {
    let shard_id = runtime.shard_id;
    let count = commands.len();
    let Ok(_permits) = runtime.queue.try_acquire_many(count as u32) else {
        let busy = ShardReply::unavailable(&format!("shard {shard_id} has too many queued writes; retry with the same key"));
        return vec![busy; count];
    };
    let mut writes = Vec::with_capacity(count);
    let mut waits = Vec::with_capacity(count);
    let mut asked = Vec::with_capacity(count);
    for command in commands {
        let (port, answer) = ractor::concurrency::oneshot();
        asked.push((
            command.tenant_id(),
            matches!(command, Command::ClaimKey(_) | Command::BeginSaga(_) | Command::AbandonKey(_)),
        ));
        writes.push((command, port.into()));
        waits.push(answer);
    }
    let Some(writer) = runtime.writers.writer() else {
        return vec![ShardReply::unavailable(&format!("shard {shard_id} writer is restarting; retry with the same key")); count];
    };
    if writer.cast(ShardMsg::Write(writes)).is_err() {
        return vec![ShardReply::unavailable(&format!("shard {shard_id} writer is not running; retry with the same key")); count];
    }
    let deadline = tokio::time::Instant::now() + runtime.request_timeout;
    // Replies that need a read (replays, account objects) are built concurrently.
    let replies = asked.into_iter().zip(waits).map(|((tenant_id, is_claim), answer)| async move {
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(outcome))) => reply_for(runtime, tenant_id, is_claim, outcome).await,
            Ok(Ok(Err(WriteFailure::Unavailable(message)))) => ShardReply::unavailable(&message),
            Ok(Ok(Err(WriteFailure::Internal(message)))) => ShardReply::internal(&message),
            Ok(Err(_)) => ShardReply::unavailable(&format!("shard {shard_id} writer stopped; retry with the same key")),
            Err(_) => {
                warn!(shard_id, "shard writer did not answer in time");
                ShardReply::unavailable(&format!("shard {shard_id} did not answer in time; retry with the same key"))
            }
        }
    });
    futures::future::join_all(replies).await
}

async fn reply_for(runtime: &ShardRuntime, tenant_id: Uuid, is_claim: bool, outcome: Outcome) -> ShardReply {
    let shard_id = runtime.shard_id;
    match outcome {
        Outcome::Posted(posted) => ShardReply::posted(posted.ledger_tx_id, &PostReply::new(&posted, false)),
        Outcome::Replay { ledger_tx_id } if is_claim => ShardReply::Claim(ClaimAnswer::Replay { ledger_tx_id }),
        Outcome::Replay { ledger_tx_id } => replay(runtime, tenant_id, ledger_tx_id).await,
        Outcome::ReplayRejection { body, .. } => ShardReply::stored_refusal(&body),
        Outcome::Rejected(rejection) => ShardReply::rejected(&rejection),
        Outcome::Account { account_id } => match store::account_object(&runtime.pool, tenant_id, account_id).await {
            Ok(Some(account)) => ShardReply::ok(&account),
            Ok(None) => ShardReply::internal("a committed account is missing"),
            Err(error) => store_failure(shard_id, error),
        },
        Outcome::KeyClaimed | Outcome::RefClaimed => ShardReply::Claim(ClaimAnswer::Claimed),
        Outcome::RefHeld { ledger_tx_id } => ShardReply::Claim(ClaimAnswer::Held { ledger_tx_id }),
        Outcome::Completed => ShardReply::Claim(ClaimAnswer::Completed),
        Outcome::SagaBegun(record) => {
            ShardReply::Claim(ClaimAnswer::SagaBegun { saga_id: record.saga_id, created_at: record.created_at, first_step: None })
        }
        Outcome::SagaBegunWithFirstStep(record, first) => {
            // a fresh saga's first step either posted or was refused
            let first_step = match *first {
                Outcome::Posted(posted) => ShardReply::posted(posted.ledger_tx_id, &PostReply::new(&posted, false)),
                Outcome::Rejected(rejection) => ShardReply::rejected(&rejection),
                other => ShardReply::internal(&format!("unexpected first step outcome {other:?}")),
            };
            ShardReply::Claim(ClaimAnswer::SagaBegun {
                saga_id: record.saga_id,
                created_at: record.created_at,
                first_step: Some(Box::new(first_step)),
            })
        }
        Outcome::SagaSaved { updated_at } => ShardReply::Claim(ClaimAnswer::SagaSaved { updated_at }),
        Outcome::SagaInFlight { saga_id } if is_claim => ShardReply::Claim(ClaimAnswer::SagaInFlight { saga_id }),
        // a post or reversal whose key a running saga holds: the client retries later
        Outcome::SagaInFlight { .. } => ShardReply::rejected(&Rejection::InProgress),
        Outcome::Saga(record) => ShardReply::Claim(ClaimAnswer::Saga { record }),
    }
}
