//! # ledger-router
//!
//! The NATS front door: the `ledger` service of PROTOCOL.md (so `$SRV.PING|INFO|STATS.ledger`
//! answer), in a queue group so that any number of routers share the load. A router keeps
//! no state of its own: it parses and validates a request, places its accounts on the
//! hash ring, forwards the work to the shard that owns them, and relays the answer with
//! the protocol's error headers.
//!
//! Transactions whose accounts live on different shards run as sagas ([`saga`]); every
//! router also resumes sagas whose coordinator died.

pub mod audit;
mod claims;
#[cfg(all(feature = "fault-injection", debug_assertions))]
pub mod faults;
mod saga;

use anyhow::Context;
use async_nats::service::ServiceExt;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use ledger_core::command::{
    ClaimKeyCommand, ClaimRefCommand, Command, CompleteKeyCommand, CompleteRefCommand, ExternalRef, KeyCompletion, RefCompletion,
};
use ledger_core::ids::{is_saga_id, shard_of_ledger_id};
use ledger_core::rejection::Rejection;
use ledger_core::ring::{HashRing, ShardId};
use ledger_node::config::ClusterConfig;
use ledger_node::server::{LocalShards, NodeHandles};
use ledger_protocol::headers;
use ledger_protocol::internal::{ClaimAnswer, Redirect, ShardReply, ShardRequest, TransactionLookup};
use ledger_protocol::request::{
    AccountRef, CreateAccountRequest, EmptyRequest, GetTransactionRequest, PostRequest, ReverseRequest, SetStatusRequest,
    StatementRequest, parse,
};
use ledger_protocol::subject::{self, ADMIN_OPERATIONS, QUEUE_GROUP, SERVICE_NAME, SERVICE_VERSION, TENANT_OPERATIONS};
use serde_json::json;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use uuid::Uuid;

pub struct Router {
    link: ShardLink,
    config: ClusterConfig,
    ring: HashRing,
    /// Facts of accounts (existence, currency, type) read for sagas. They never change
    /// once an account exists, so a cached fact is never stale; absence is not cached.
    account_facts: std::sync::Mutex<lru::LruCache<(Uuid, Uuid), ledger_protocol::internal::AccountFacts>>,
}

/// How long the audit waits for a shard's part (it scans the shard's journal).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Most account facts one router keeps.
const ACCOUNT_FACTS_CACHED_MAX: usize = 200_000;

/// Runs a router until `shutdown` resolves.
pub async fn run(config: ClusterConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_beside(config, LocalShards::default(), shutdown).await
}

/// Runs node `node_name` of `config` and a router beside it in this process (as
/// `ledger-router --node` does) until `shutdown` resolves: the router reaches that node's
/// shards in-process, the others over NATS as any router does.
pub async fn run_with_node(
    config: ClusterConfig,
    node_name: &str,
    handles: NodeHandles,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = ledger_node::server::start(&config, node_name, handles).await?;
    let served = run_beside(config, node.local_shards(), shutdown).await;
    node.stop().await;
    served
}

/// Runs a router in the process of a node whose shards are `local`: requests for those
/// shards go to them in-process, the others over NATS as from any router.
async fn run_beside(config: ClusterConfig, local: LocalShards, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("ledger-router")
        .connect(&config.cluster.nats_url)
        .await
        .with_context(|| format!("connect to NATS at {}", config.cluster.nats_url))?;
    let service = client
        .service_builder()
        .description("sharded double-entry ledger, protocol v1")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE_NAME, SERVICE_VERSION)
        .await
        .map_err(|e| anyhow::anyhow!("start the ledger service: {e}"))?;
    let in_flight = Arc::new(Semaphore::new(config.limits.router_in_flight_max));
    let router = Arc::new(Router {
        link: ShardLink::new(
            ShardCalls {
                client: client.clone(),
                local,
                request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
            },
            &config,
        ),
        ring: config.ring(),
        config,
        account_facts: std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(ACCOUNT_FACTS_CACHED_MAX).expect("positive"),
        )),
    });
    let mut endpoints = Vec::new();
    for operation in TENANT_OPERATIONS {
        let name = operation.replace('.', "_");
        endpoints.push(service.endpoint_builder().name(name).add(format!("ledger.v1.*.{operation}")).await);
    }
    for operation in ADMIN_OPERATIONS {
        endpoints.push(
            service.endpoint_builder().name(format!("admin_{operation}")).add(format!("ledger.v1.admin.{operation}")).await,
        );
    }
    let mut tasks = Vec::new();
    let recovering = router.clone();
    tasks.push(tokio::spawn(async move { recovering.recover().await }));
    for endpoint in endpoints {
        let mut endpoint = endpoint.map_err(|e| anyhow::anyhow!("add endpoint: {e}"))?;
        let router = router.clone();
        let in_flight = in_flight.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let received = Instant::now();
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let router = router.clone();
                tokio::spawn(async move {
                    // Boxed: the future of `handle` holds the state of every operation;
                    // held inline, it made the task so large that copying it on spawn
                    // took about 5% of this process's CPU (docs/BENCHMARKS.md, section 1).
                    let reply = Box::pin(router.handle(&request.message.subject, &request.message.payload)).await;
                    let held = wants_timing(&request.message).then(|| received.elapsed());
                    if let Err(error) = respond(&request, reply, held).await {
                        warn!(%error, "cannot send a reply");
                    }
                    drop(permit);
                });
            }
        }));
    }
    client.flush().await.ok();
    info!(shards = router.ring.shards().len(), "router serving");
    shutdown.await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// Sends a reply; a failure carries the JSON error body and both NATS service headers,
/// and a reply to a request that asked for it the time the ledger held the request
/// (`ledger_protocol::headers`).
async fn respond(
    request: &async_nats::service::Request,
    reply: ShardReply,
    held: Option<Duration>,
) -> Result<(), async_nats::PublishError> {
    let body = Bytes::copy_from_slice(reply.body.get().as_bytes());
    if reply.status == 200 && held.is_none() {
        return request.respond(Ok(body)).await;
    }
    let mut headers = HeaderMap::new();
    if reply.status != 200 {
        headers.insert("Nats-Service-Error-Code", reply.status.to_string().as_str());
        headers.insert("Nats-Service-Error", reply.error_code().as_deref().unwrap_or("INTERNAL"));
    }
    if let Some(held) = held {
        headers.insert(headers::SERVER_MICROS, held.as_micros().to_string().as_str());
    }
    request.respond_with_headers(Ok(body), headers).await
}

fn wants_timing(message: &async_nats::Message) -> bool {
    message.headers.as_ref().is_some_and(|headers| headers.get(headers::TIMING_REQUEST).is_some())
}

fn rejected(rejection: Rejection) -> ShardReply {
    ShardReply::rejected(&rejection)
}

impl Router {
    pub async fn handle(&self, subject: &Subject, payload: &Bytes) -> ShardReply {
        match self.dispatch(subject, payload).await {
            Ok(reply) => reply,
            Err(rejection) => rejected(rejection),
        }
    }

    async fn dispatch(&self, subject: &str, payload: &[u8]) -> Result<ShardReply, Rejection> {
        if let Some(operation) = subject.strip_prefix("ledger.v1.admin.") {
            return self.admin(operation, payload).await;
        }
        let tenant_id = subject::tenant_of(subject)
            .ok_or_else(|| Rejection::invalid("subject", "the tenant id must be a lowercase canonical UUID"))?;
        let operation = &subject["ledger.v1.".len() + 36 + 1..];
        Ok(match operation {
            "accounts.create" => {
                let command = parse::<CreateAccountRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.ring.shard_for_account(command.account_id);
                self.link.write(shard, Command::CreateAccount(command)).await
            }
            "accounts.get" => {
                let account_id = parse::<AccountRef>(payload)?.resolve(tenant_id)?;
                let shard = self.ring.shard_for_account(account_id);
                self.link.send(shard, &ShardRequest::GetAccount { tenant_id, account_id }).await
            }
            "accounts.set_status" => {
                let command = parse::<SetStatusRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.ring.shard_for_account(command.account_id);
                self.link.write(shard, Command::SetStatus(command)).await
            }
            "accounts.statement" => {
                let query = parse::<StatementRequest>(payload)?.into_query(tenant_id)?;
                let shard = self.ring.shard_for_account(query.account_id);
                self.link.send(shard, &ShardRequest::Statement { tenant_id, query }).await
            }
            "transactions.post" => {
                let command = parse::<PostRequest>(payload)?.into_command(tenant_id)?;
                let shards: BTreeSet<ShardId> =
                    command.entries.iter().map(|e| self.ring.shard_for_account(e.account_id)).collect();
                if shards.len() > 1 {
                    return Ok(self.cross_shard_post(command).await);
                }
                let target = *shards.first().expect("validated: at least two entries");
                self.keyed_write(target, Command::Post(command)).await
            }
            "transactions.reverse" => {
                let command = parse::<ReverseRequest>(payload)?.into_command(tenant_id)?;
                if is_saga_id(command.ledger_tx_id)
                    && let Some(home) = self.shard_of_transaction(command.ledger_tx_id)
                {
                    let ask = ShardRequest::GetSaga { tenant_id, saga_id: command.ledger_tx_id };
                    let found = self.link.send(home, &ask).await;
                    match found.status {
                        200 => match serde_json::from_str(found.body.get()) {
                            Ok(original) => return Ok(self.cross_shard_reverse(command, original).await),
                            Err(error) => return Ok(ShardReply::internal(&format!("malformed saga log: {error}"))),
                        },
                        // an id minted before saga ids were flagged: an ordinary transaction
                        404 => {}
                        _ => return Ok(found),
                    }
                }
                let target = self.shard_of_transaction(command.ledger_tx_id).ok_or(Rejection::TransactionNotFound)?;
                self.keyed_write(target, Command::Reverse(command)).await
            }
            "transactions.get" => {
                let lookup = parse::<GetTransactionRequest>(payload)?.into_lookup()?;
                self.get_transaction(tenant_id, lookup).await?
            }
            _ => return Err(Rejection::invalid("subject", format!("unknown operation {operation}"))),
        })
    }

    async fn admin(&self, operation: &str, payload: &[u8]) -> Result<ShardReply, Rejection> {
        match operation {
            "topology" => {
                parse::<EmptyRequest>(payload)?;
                Ok(ShardReply::ok(&self.topology()))
            }
            "audit" => {
                parse::<EmptyRequest>(payload)?;
                Ok(self.audit().await)
            }
            "rebuild_balances" => {
                parse::<EmptyRequest>(payload)?;
                Ok(self.rebuild_balances().await)
            }
            _ => Err(Rejection::invalid("subject", format!("unknown operator operation {operation}"))),
        }
    }

    /// Every shard's audit, read concurrently, and the cluster-wide checks.
    async fn audit(&self) -> ShardReply {
        // full scans of every shard: allowed far longer than a request
        let reads = self
            .ring
            .shards()
            .iter()
            .map(|shard| async move { (*shard, self.link.send_within(AUDIT_TIMEOUT, *shard, &ShardRequest::Audit).await) });
        let mut parts = Vec::new();
        let mut unreachable = Vec::new();
        for (shard, reply) in futures::future::join_all(reads).await {
            match serde_json::from_str::<ledger_protocol::internal::ShardAudit>(reply.body.get()) {
                Ok(part) if reply.status == 200 => parts.push(part),
                _ => unreachable.push((shard, reply.body_value())),
            }
        }
        ShardReply::ok(&audit::summarize(&parts, &unreachable))
    }

    /// The recovery loop, forever: on every shard, the sagas whose coordinator stopped and
    /// the claims whose router died (`saga.rs`, `claims.rs`).
    async fn recover(&self) {
        let interval = Duration::from_millis(self.config.limits.saga_recovery_interval_ms);
        loop {
            tokio::time::sleep(interval).await;
            for shard in self.ring.shards().to_vec() {
                self.resume_sagas_on(shard).await;
                self.settle_claims_on(shard).await;
            }
        }
    }

    /// Every shard recomputes its balance projection from its journal (through its writer).
    async fn rebuild_balances(&self) -> ShardReply {
        let rebuilds = self.ring.shards().iter().map(|shard| async move {
            (*shard, self.link.send_within(AUDIT_TIMEOUT, *shard, &ShardRequest::RebuildBalances).await)
        });
        let mut shards = Vec::new();
        let mut unreachable = Vec::new();
        for (shard, reply) in futures::future::join_all(rebuilds).await {
            match serde_json::from_str::<ledger_protocol::internal::RebuiltBalances>(reply.body.get()) {
                Ok(part) if reply.status == 200 => shards.push(part),
                _ => unreachable.push(serde_json::json!({"shard_id": shard, "error": reply.body_value()})),
            }
        }
        let corrected: i64 = shards.iter().map(|s| s.corrected_count).sum();
        ShardReply::ok(&serde_json::json!({
            "ok": unreachable.is_empty(),
            "corrected_count": corrected,
            "shards": shards,
            "unreachable_shards": unreachable,
        }))
    }

    pub fn topology(&self) -> serde_json::Value {
        let shards: Vec<_> = self
            .config
            .shards
            .iter()
            .map(|s| json!({"shard_id": s.id, "node": self.config.owner_of(s.id).map(|n| n.name.clone())}))
            .collect();
        let nodes: Vec<_> = self.config.nodes.iter().map(|n| json!({"name": n.name, "shards": n.shards})).collect();
        json!({
            "cluster": self.config.cluster.name,
            "shards": shards,
            "nodes": nodes,
            "ring": {
                "virtual_nodes_per_shard": self.ring.params().virtual_nodes_per_shard,
                "hash": self.config.ring.hash,
                "points": self.ring.shards().len() as u64 * self.ring.params().virtual_nodes_per_shard as u64,
                "probes": ledger_core::ring::PROBES,
            },
        })
    }

    fn shard_of_transaction(&self, ledger_tx_id: Uuid) -> Option<ShardId> {
        shard_of_ledger_id(ledger_tx_id).filter(|shard| self.ring.shards().contains(shard))
    }

    /// A lookup by id goes to the shard the id names; by key or reference, to their home
    /// shard, which answers or names where to ask next.
    async fn get_transaction(&self, tenant_id: Uuid, lookup: TransactionLookup) -> Result<ShardReply, Rejection> {
        let first = match &lookup {
            TransactionLookup::Id(id) => self.shard_of_transaction(*id).ok_or(Rejection::TransactionNotFound)?,
            TransactionLookup::IdempotencyKey(key) => self.ring.shard_for_key(tenant_id, key),
            TransactionLookup::ExternalRef(external_ref) => {
                self.ring.shard_for_key(tenant_id, &external_ref_home_key(external_ref))
            }
        };
        let mut reply = self.link.send(first, &ShardRequest::GetTransaction { tenant_id, by: lookup.clone() }).await;
        // at most two hops: key home -> deciding shard -> the transaction's shard
        for _ in 0..2 {
            let (shard, by) = match reply.as_redirect() {
                None => return Ok(reply),
                Some(Redirect::Transaction { ledger_tx_id }) => (
                    self.shard_of_transaction(ledger_tx_id).ok_or(Rejection::TransactionNotFound)?,
                    TransactionLookup::Id(ledger_tx_id),
                ),
                Some(Redirect::KeyOnShard { shard_id }) => (shard_id, lookup.clone()),
                Some(Redirect::Saga { record }) => return Ok(self.saga_transaction(&record).await),
            };
            reply = self.link.send(shard, &ShardRequest::GetTransaction { tenant_id, by }).await;
        }
        Ok(reply.as_redirect().map_or(reply, |_| ShardReply::internal("transaction lookup did not settle")))
    }

    /// A post or reversal. Its idempotency key (and external reference) must be unique
    /// across the cluster, so each is claimed on its home shard first when that is not the
    /// target shard; the target decides and posts exactly once; then the homes learn the
    /// outcome ([`Router::complete`] says which completions wait and which do not).
    async fn keyed_write(&self, target: ShardId, mut command: Command) -> ShardReply {
        let tenant_id = command.tenant_id();
        let key = command.idempotency_key().expect("posts and reversals carry a key").to_owned();
        let fingerprint = match &command {
            Command::Post(c) => c.fingerprint.clone(),
            Command::Reverse(c) => c.fingerprint.clone(),
            _ => unreachable!("keyed writes are posts and reversals"),
        };
        let key_home = self.ring.shard_for_key(tenant_id, &key);
        let reference = command.external_ref().cloned();
        let ref_home = reference.as_ref().map(|r| self.ring.shard_for_key(tenant_id, &external_ref_home_key(r)));
        let claims = Claims {
            tenant_id,
            key,
            fingerprint,
            key_home: (key_home != target).then_some(key_home),
            reference: reference.zip(ref_home).filter(|(_, home)| *home != target),
        };

        if let Some(home) = claims.key_home {
            let claim = ClaimKeyCommand {
                tenant_id,
                idempotency_key: claims.key.clone(),
                fingerprint: claims.fingerprint.clone(),
                target_shard: target,
            };
            let answer = self.link.write(home, Command::ClaimKey(claim)).await;
            match answer.as_claim() {
                Some(ClaimAnswer::Claimed) => {}
                Some(ClaimAnswer::Replay { ledger_tx_id }) => return self.replay(tenant_id, ledger_tx_id).await,
                Some(ClaimAnswer::SagaInFlight { .. }) => return rejected(Rejection::InProgress),
                // a conflict, a replayed rejection, or the home is unavailable
                _ if answer.status != 200 => return answer,
                _ => return ShardReply::internal(&format!("unexpected answer to a key claim: {}", answer.body.get())),
            }
        }
        if let Some((external_ref, home)) = &claims.reference {
            let claim = ClaimRefCommand {
                tenant_id,
                external_ref: external_ref.clone(),
                idempotency_key: claims.key.clone(),
                fingerprint: claims.fingerprint.clone(),
            };
            let answer = self.link.write(*home, Command::ClaimRef(claim)).await;
            match answer.as_claim() {
                Some(ClaimAnswer::Claimed) => {}
                Some(ClaimAnswer::Held { ledger_tx_id: Some(holder) }) => {
                    if let Command::Post(post) = &mut command {
                        post.external_ref_held_by = Some(holder);
                    }
                }
                Some(ClaimAnswer::Held { ledger_tx_id: None }) => {
                    let refused = rejected(Rejection::InProgress);
                    self.complete(claims.without_reference(), &refused).await;
                    return refused;
                }
                _ => {
                    self.complete(claims.without_reference(), &answer).await;
                    return answer;
                }
            }
        }
        let reply = self.link.write(target, command).await;
        self.complete(claims, &reply).await;
        reply
    }

    /// Records the target's decision on the home shards: a reference binding or release and
    /// a key release before the client hears the outcome, a consumed key in the background.
    async fn complete(&self, claims: Claims, reply: &ShardReply) {
        let (key_completion, ref_completion) = match reply.status {
            200 => {
                let Some(ledger_tx_id) = reply.ledger_tx_id() else { return };
                (KeyCompletion::Posted { ledger_tx_id }, RefCompletion::Bound { ledger_tx_id })
            }
            // the outcome is not known: leave the claims, a retry with the key finishes them
            status if status >= 500 => return,
            _ => {
                let code = reply.error_code().unwrap_or_default();
                let key = if ledger_core::batch::rejection_is_stored(reply.status, &reply.body_value()) {
                    KeyCompletion::Rejected { status: reply.status, body: reply.body_value() }
                } else if code == "IDEMPOTENCY_CONFLICT" {
                    // the key belongs to another request: not ours to complete
                    return;
                } else {
                    KeyCompletion::Released
                };
                (key, RefCompletion::Released)
            }
        };
        // The reference's home learns the outcome before the client does: a second request
        // with the same reference must see it posted (a duplicate), not still pending.
        if let Some((external_ref, home)) = claims.reference.clone() {
            let complete = CompleteRefCommand {
                tenant_id: claims.tenant_id,
                external_ref,
                idempotency_key: claims.key.clone(),
                completion: ref_completion,
            };
            self.link.write(home, Command::CompleteRef(complete)).await;
        }
        let Some(home) = claims.key_home else { return };
        let released = key_completion == KeyCompletion::Released;
        let complete = CompleteKeyCommand {
            tenant_id: claims.tenant_id,
            idempotency_key: claims.key,
            fingerprint: claims.fingerprint,
            completion: key_completion,
        };
        let link = self.link.clone();
        let send = async move {
            link.write(home, Command::CompleteKey(complete)).await;
        };
        // A refusal that consumes no key must have freed it before the client hears of it,
        // or an immediate corrected retry would meet the stale claim. Outcomes that consume
        // the key can be recorded later: until then the home sends retries to the target,
        // which replays.
        if released {
            send.await;
        } else {
            tokio::spawn(send);
        }
    }

    async fn replay(&self, tenant_id: Uuid, ledger_tx_id: Uuid) -> ShardReply {
        match self.shard_of_transaction(ledger_tx_id) {
            Some(shard) => self.link.send(shard, &ShardRequest::PostReply { tenant_id, ledger_tx_id }).await,
            None => ShardReply::internal("a key names a transaction on an unknown shard"),
        }
    }
}

/// What a keyed write claimed on home shards other than its target.
#[derive(Clone)]
struct Claims {
    tenant_id: Uuid,
    key: String,
    fingerprint: String,
    key_home: Option<ShardId>,
    reference: Option<(ExternalRef, ShardId)>,
}

impl Claims {
    fn without_reference(&self) -> Claims {
        Claims {
            tenant_id: self.tenant_id,
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            key_home: self.key_home,
            reference: None,
        }
    }
}

/// The string whose place on the ring is an external reference's home shard.
pub fn external_ref_home_key(external_ref: &ExternalRef) -> String {
    format!("external-ref\u{1f}{}\u{1f}{}", external_ref.ref_type, external_ref.reference)
}

/// Most writes one router puts into one message to a shard.
pub const WRITE_BATCH_COMMANDS_MAX: usize = 256;
/// Most write messages one router has outstanding to one shard; while they are out, new
/// writes queue and leave together in the next message.
pub const WRITE_BATCHES_IN_FLIGHT_MAX: usize = 4;

struct PendingWrite {
    command: Command,
    reply: tokio::sync::oneshot::Sender<ShardReply>,
}

/// Requests to shards, with the cluster's timeout: in-process to the shards of a node in
/// this process, over NATS to the others.
#[derive(Clone)]
struct ShardCalls {
    client: async_nats::Client,
    local: LocalShards,
    request_timeout: Duration,
}

/// [`ShardCalls`], with writes to a shard batched: whatever queued while earlier messages
/// were out goes in one message.
#[derive(Clone)]
struct ShardLink {
    calls: ShardCalls,
    writers: Arc<std::collections::HashMap<ShardId, tokio::sync::mpsc::Sender<PendingWrite>>>,
}

impl std::ops::Deref for ShardLink {
    type Target = ShardCalls;

    fn deref(&self) -> &ShardCalls {
        &self.calls
    }
}

impl ShardLink {
    fn new(calls: ShardCalls, config: &ClusterConfig) -> ShardLink {
        let mut writers = std::collections::HashMap::new();
        for shard in &config.shards {
            let (queue, pending) = tokio::sync::mpsc::channel(config.limits.shard_queue_commands_max);
            writers.insert(shard.id, queue);
            tokio::spawn(batch_writes(calls.clone(), shard.id, pending));
        }
        ShardLink { calls, writers: Arc::new(writers) }
    }

    async fn write(&self, shard: ShardId, command: Command) -> ShardReply {
        let Some(queue) = self.writers.get(&shard) else {
            return ShardReply::internal(&format!("no shard {shard} in the cluster config"));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if queue.try_send(PendingWrite { command, reply }).is_err() {
            return ShardReply::unavailable(&format!("too many writes queued for shard {shard}; retry with the same key"));
        }
        answer.await.unwrap_or_else(|_| ShardReply::internal("the write batcher stopped"))
    }
}

impl ShardCalls {
    async fn send(&self, shard: ShardId, request: &ShardRequest) -> ShardReply {
        self.send_within(self.request_timeout, shard, request).await
    }

    async fn send_within(&self, timeout: Duration, shard: ShardId, request: &ShardRequest) -> ShardReply {
        if let Some(local) = self.local.get(shard) {
            return tokio::time::timeout(timeout, local.request(request.clone())).await.unwrap_or_else(|_| late(shard));
        }
        let body = serde_json::to_vec(request).expect("requests serialize");
        let ask = self.client.request(subject::shard_subject(shard), body.into());
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(message)) => serde_json::from_slice(&message.payload)
                .unwrap_or_else(|error| ShardReply::internal(&format!("malformed shard reply: {error}"))),
            Ok(Err(error)) => {
                warn!(shard, %error, "shard request failed");
                ShardReply::unavailable(&format!("shard {shard} cannot be reached; retry with the same key"))
            }
            Err(_) => late(shard),
        }
    }

    /// One reply per command, in order, for commands that go to a shard together.
    async fn write_together(&self, shard: ShardId, commands: Vec<Command>) -> Vec<ShardReply> {
        let count = commands.len();
        if let Some(local) = self.local.get(shard) {
            return tokio::time::timeout(self.request_timeout, local.write(commands))
                .await
                .unwrap_or_else(|_| vec![late(shard); count]);
        }
        let request = if count == 1 {
            ShardRequest::Write { command: Box::new(commands.into_iter().next().expect("one")) }
        } else {
            ShardRequest::WriteBatch { commands }
        };
        let reply = self.send(shard, &request).await;
        if count == 1 {
            return vec![reply];
        }
        match serde_json::from_str::<Vec<ShardReply>>(reply.body.get()) {
            Ok(answers) if reply.status == 200 && answers.len() == count => answers,
            // the whole message failed: every write in it gets that failure
            _ if reply.status != 200 => vec![reply; count],
            _ => vec![ShardReply::internal("malformed batch reply from the shard"); count],
        }
    }
}

fn late(shard: ShardId) -> ShardReply {
    ShardReply::unavailable(&format!("shard {shard} did not answer in time; retry with the same key"))
}

/// Drains one shard's write queue into messages of up to [`WRITE_BATCH_COMMANDS_MAX`].
async fn batch_writes(calls: ShardCalls, shard: ShardId, mut pending: tokio::sync::mpsc::Receiver<PendingWrite>) {
    let in_flight = Arc::new(Semaphore::new(WRITE_BATCHES_IN_FLIGHT_MAX));
    let mut batch = Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX);
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        if pending.recv_many(&mut batch, WRITE_BATCH_COMMANDS_MAX).await == 0 {
            return;
        }
        let writes = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX));
        let calls = calls.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<Command>, Vec<_>) = writes.into_iter().map(|w| (w.command, w.reply)).unzip();
            let answers = calls.write_together(shard, commands).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            drop(permit);
        });
    }
}
