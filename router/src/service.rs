//! Start-up: the `ledger` NATS service in its queue group, one endpoint per operation,
//! and replies that carry the protocol's error headers.

use crate::link::{ShardCalls, ShardLink};
use crate::*;
use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use ledger_config::ClusterConfig;
use ledger_core::error_code::ErrorCode;
use ledger_protocol::headers;
use ledger_protocol::internal::ShardReply;
use ledger_protocol::subject::{ADMIN_OPERATIONS, QUEUE_GROUP, SERVICE_NAME, SERVICE_VERSION, TENANT_OPERATIONS};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// Runs a router until `shutdown` resolves.
pub async fn run(config: ClusterConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_beside(config, Arc::new(NoLocalShards), shutdown).await
}

/// Runs a router in the process of a node whose shards are `local`: requests for those
/// shards go to them in-process, the others over NATS as from any router.
pub async fn run_beside(
    config: ClusterConfig,
    local: Arc<dyn InProcessShards>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
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
                    // held inline, it made the task so large that copying it on spawn took
                    // about 5% of this process's CPU (docs/BENCHMARKS.md, "Boxed request
                    // futures").
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
    let body = Bytes::copy_from_slice(reply.client_body().as_bytes());
    let refusal = match &reply {
        ShardReply::Refused { code, .. } => Some(*code),
        // an answer meant for a router only: client_body says INTERNAL, so do the headers
        ShardReply::Claim(_) | ShardReply::Redirect(_) | ShardReply::Batch(_) => Some(ErrorCode::Internal),
        ShardReply::Ok(_) | ShardReply::Posted { .. } => None,
    };
    if refusal.is_none() && held.is_none() {
        return request.respond(Ok(body)).await;
    }
    let mut headers = HeaderMap::new();
    if let Some(code) = refusal {
        headers.insert("Nats-Service-Error-Code", code.status().to_string().as_str());
        headers.insert("Nats-Service-Error", code.as_str());
    }
    if let Some(held) = held {
        headers.insert(headers::SERVER_MICROS, held.as_micros().to_string().as_str());
    }
    request.respond_with_headers(Ok(body), headers).await
}

fn wants_timing(message: &async_nats::Message) -> bool {
    message.headers.as_ref().is_some_and(|headers| headers.get(headers::TIMING_REQUEST).is_some())
}
