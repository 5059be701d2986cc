//! # ledger-router
//!
//! The NATS front door: the `ledger` service of PROTOCOL.md (so `$SRV.PING|INFO|STATS.ledger`
//! answer), in a queue group so that any number of routers share the load. A router keeps
//! no state of its own: it parses and validates a request, places its accounts on the
//! hash ring, forwards the work to the shard that owns them, and relays the answer with
//! the protocol's error headers.
//!
//! Transactions whose accounts live on different shards are refused with
//! `INVALID_REQUEST` until the saga coordinator exists (see the README).

use anyhow::Context;
use async_nats::service::ServiceExt;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use ledger_core::ids::shard_of_ledger_id;
use ledger_core::rejection::Rejection;
use ledger_core::ring::{HashRing, ShardId};
use ledger_node::config::ClusterConfig;
use ledger_protocol::internal::{ShardReply, ShardRequest, TransactionLookup};
use ledger_protocol::request::{
    AccountRef, CreateAccountRequest, EmptyRequest, GetTransactionRequest, PostRequest, ReverseRequest, SetStatusRequest,
    StatementRequest, parse,
};
use ledger_protocol::subject::{self, ADMIN_OPERATIONS, QUEUE_GROUP, SERVICE_NAME, SERVICE_VERSION, TENANT_OPERATIONS};
use serde_json::json;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{info, warn};
use uuid::Uuid;

pub struct Router {
    client: async_nats::Client,
    config: ClusterConfig,
    ring: HashRing,
    request_timeout: Duration,
}

/// Runs a router until `shutdown` resolves.
pub async fn run(config: ClusterConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
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
        client: client.clone(),
        ring: config.ring(),
        request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
        config,
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
    for endpoint in endpoints {
        let mut endpoint = endpoint.map_err(|e| anyhow::anyhow!("add endpoint: {e}"))?;
        let router = router.clone();
        let in_flight = in_flight.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let router = router.clone();
                tokio::spawn(async move {
                    let reply = router.handle(&request.message.subject, &request.message.payload).await;
                    if let Err(error) = respond(&request, reply).await {
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

/// Sends a reply; a failure carries the JSON error body and both NATS service headers.
async fn respond(request: &async_nats::service::Request, reply: ShardReply) -> Result<(), async_nats::PublishError> {
    let body = Bytes::from(serde_json::to_vec(&reply.body).expect("json serializes"));
    if reply.status == 200 {
        return request.respond(Ok(body)).await;
    }
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Service-Error-Code", reply.status.to_string().as_str());
    headers.insert("Nats-Service-Error", reply.error_code().unwrap_or("INTERNAL"));
    request.respond_with_headers(Ok(body), headers).await
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
            return self.admin(operation, payload);
        }
        let tenant_id = subject::tenant_of(subject)
            .ok_or_else(|| Rejection::invalid("subject", "the tenant id must be a lowercase canonical UUID"))?;
        let operation = &subject["ledger.v1.".len() + 36 + 1..];
        Ok(match operation {
            "accounts.create" => {
                let command = parse::<CreateAccountRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.ring.shard_for_account(command.account_id);
                self.write(shard, ledger_core::command::Command::CreateAccount(command)).await
            }
            "accounts.get" => {
                let account_id = parse::<AccountRef>(payload)?.resolve(tenant_id)?;
                let shard = self.ring.shard_for_account(account_id);
                self.send(shard, &ShardRequest::GetAccount { tenant_id, account_id }).await
            }
            "accounts.set_status" => {
                let command = parse::<SetStatusRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.ring.shard_for_account(command.account_id);
                self.write(shard, ledger_core::command::Command::SetStatus(command)).await
            }
            "accounts.statement" => {
                let query = parse::<StatementRequest>(payload)?.into_query(tenant_id)?;
                let shard = self.ring.shard_for_account(query.account_id);
                self.send(shard, &ShardRequest::Statement { tenant_id, query }).await
            }
            "transactions.post" => {
                let command = parse::<PostRequest>(payload)?.into_command(tenant_id)?;
                let shards: BTreeSet<ShardId> =
                    command.entries.iter().map(|e| self.ring.shard_for_account(e.account_id)).collect();
                if shards.len() > 1 {
                    return Err(Rejection::invalid(
                        "entries",
                        "the accounts live on different shards; cross-shard transactions are not supported yet",
                    ));
                }
                let shard = *shards.first().expect("validated: at least two entries");
                self.write(shard, ledger_core::command::Command::Post(command)).await
            }
            "transactions.reverse" => {
                let command = parse::<ReverseRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.shard_of_transaction(command.ledger_tx_id).ok_or(Rejection::TransactionNotFound)?;
                self.write(shard, ledger_core::command::Command::Reverse(command)).await
            }
            "transactions.get" => {
                let lookup = parse::<GetTransactionRequest>(payload)?.into_lookup()?;
                self.get_transaction(tenant_id, lookup).await?
            }
            _ => return Err(Rejection::invalid("subject", format!("unknown operation {operation}"))),
        })
    }

    fn admin(&self, operation: &str, payload: &[u8]) -> Result<ShardReply, Rejection> {
        match operation {
            "topology" => {
                parse::<EmptyRequest>(payload)?;
                Ok(ShardReply::ok(self.topology()))
            }
            _ => Err(Rejection::invalid("subject", format!("unknown operator operation {operation}"))),
        }
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
            },
        })
    }

    fn shard_of_transaction(&self, ledger_tx_id: Uuid) -> Option<ShardId> {
        shard_of_ledger_id(ledger_tx_id).filter(|shard| self.ring.shards().contains(shard))
    }

    async fn get_transaction(&self, tenant_id: Uuid, lookup: TransactionLookup) -> Result<ShardReply, Rejection> {
        if let TransactionLookup::Id(id) = lookup {
            let shard = self.shard_of_transaction(id).ok_or(Rejection::TransactionNotFound)?;
            return Ok(self.send(shard, &ShardRequest::GetTransaction { tenant_id, by: lookup }).await);
        }
        // A key or reference is recorded on the shard that posted it: ask them all.
        let request = ShardRequest::GetTransaction { tenant_id, by: lookup };
        let asks = self.ring.shards().iter().map(|shard| self.send(*shard, &request));
        let replies = futures::future::join_all(asks).await;
        if let Some(found) = replies.iter().find(|r| r.status == 200) {
            return Ok(found.clone());
        }
        if let Some(failed) = replies.into_iter().find(|r| r.status >= 500) {
            return Ok(failed);
        }
        Err(Rejection::TransactionNotFound)
    }

    async fn write(&self, shard: ShardId, command: ledger_core::command::Command) -> ShardReply {
        self.send(shard, &ShardRequest::Write { command }).await
    }

    async fn send(&self, shard: ShardId, request: &ShardRequest) -> ShardReply {
        let body = serde_json::to_vec(request).expect("requests serialize");
        let ask = self.client.request(subject::shard_subject(shard), body.into());
        match tokio::time::timeout(self.request_timeout, ask).await {
            Ok(Ok(message)) => serde_json::from_slice(&message.payload)
                .unwrap_or_else(|error| ShardReply::internal(&format!("malformed shard reply: {error}"))),
            Ok(Err(error)) => {
                warn!(shard, %error, "shard request failed");
                ShardReply::unavailable(&format!("shard {shard} cannot be reached; retry with the same key"))
            }
            Err(_) => ShardReply::unavailable(&format!("shard {shard} did not answer in time; retry with the same key")),
        }
    }
}
