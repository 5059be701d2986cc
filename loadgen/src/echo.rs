//! `ledger-echo`: the floor of the protocol's message path, for benchmarks.
//!
//! A NATS service that answers `ledger.v1.<tenant>.transactions.post` and
//! `ledger.v1.admin.topology` at once, with nothing behind it: no validation, no shard, no
//! database. `ledger-load` pointed at it measures what the way through NATS and the client
//! costs by itself on a machine (its CPU per request and its latency at a given rate), so
//! that a benchmark can tell the ledger's share of a latency from the share no ledger
//! behind this protocol could avoid (docs/BENCHMARKS.md, "The floor").
//!
//! It must never be taken for a ledger. It refuses to start while anything answers
//! `admin.topology` on its NATS; it serves in a queue group of its own, so that a router
//! started later still receives every request (it does not take a share of them); its
//! reply body is [`ECHO_BODY`], which no client of docs/PROTOCOL.md can read as a posting; its
//! topology says `"diagnostic_echo": true`, and `ledger-load` says so in its results.

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use ledger_protocol::admin::{RingParameters, Topology, TopologyShard};
use ledger_protocol::headers;
use std::time::{Duration, Instant};

/// The whole body of every answer to a post.
pub const ECHO_BODY: &str = r#"{"diagnostic_echo":true,"posted":false}"#;
/// Its NATS service name (`$SRV.INFO` tells it from the ledger) and queue group.
pub const ECHO_SERVICE: &str = "ledger-echo";
pub const POST_SUBJECT: &str = "ledger.v1.*.transactions.post";
pub const TOPOLOGY_SUBJECT: &str = "ledger.v1.admin.topology";
/// How long to wait for a ledger's answer before concluding none serves.
const LEDGER_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the echo's topology reports, so that a load generator places its accounts and keys
/// as it would on a cluster of that many shards.
#[derive(Debug, Clone, Copy)]
pub struct EchoTopology {
    pub shards: u16,
    pub virtual_nodes_per_shard: u32,
}

impl EchoTopology {
    pub fn reply(&self) -> Topology {
        Topology {
            cluster: ECHO_SERVICE.to_owned(),
            shards: (0..self.shards).map(|shard_id| TopologyShard { shard_id, node: None }).collect(),
            nodes: Vec::new(),
            ring: RingParameters {
                virtual_nodes_per_shard: self.virtual_nodes_per_shard,
                hash: ledger_core::ring::HASH_NAME.to_owned(),
                points: self.shards as u64 * self.virtual_nodes_per_shard as u64,
                probes: ledger_core::ring::PROBES,
            },
            diagnostic_echo: true,
        }
    }
}

/// Fails when something already answers the ledger's topology subject on this NATS.
pub async fn refuse_beside_a_ledger(client: &async_nats::Client) -> anyhow::Result<()> {
    let asked = tokio::time::timeout(LEDGER_PROBE_TIMEOUT, client.request(TOPOLOGY_SUBJECT, "{}".into())).await;
    if let Ok(Ok(answer)) = asked {
        let cluster = serde_json::from_slice::<Topology>(&answer.payload)
            .map(|topology| topology.cluster)
            .unwrap_or_else(|_| "something".to_owned());
        bail!("{cluster:?} already answers {TOPOLOGY_SUBJECT} on this NATS: ledger-echo runs only where no ledger serves");
    }
    Ok(())
}

/// The echo, subscribed and ready to answer.
pub struct Echo {
    client: async_nats::Client,
    // the service must live as long as its endpoints
    _service: async_nats::service::Service,
    posts: async_nats::service::endpoint::Endpoint,
    topologies: async_nats::service::endpoint::Endpoint,
    topology_body: Bytes,
}

/// Refuses where a ledger serves ([`refuse_beside_a_ledger`]), then subscribes.
pub async fn start(client: async_nats::Client, topology: EchoTopology) -> anyhow::Result<Echo> {
    refuse_beside_a_ledger(&client).await?;
    let service = client
        .service_builder()
        .description("diagnostic echo: answers the ledger's post subject with nothing behind it; nothing is posted")
        .queue_group(ECHO_SERVICE)
        .start(ECHO_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("start the echo service: {e}"))?;
    let posts = endpoint(&service, "transactions_post", POST_SUBJECT).await?;
    let topologies = endpoint(&service, "admin_topology", TOPOLOGY_SUBJECT).await?;
    client.flush().await.context("flush the subscriptions")?;
    let topology_body = Bytes::from(serde_json::to_vec(&topology.reply())?);
    Ok(Echo { client, _service: service, posts, topologies, topology_body })
}

async fn endpoint(
    service: &async_nats::service::Service,
    name: &str,
    subject: &'static str,
) -> anyhow::Result<async_nats::service::endpoint::Endpoint> {
    service.endpoint_builder().name(name).add(subject).await.map_err(|e| anyhow::anyhow!("add {subject}: {e}"))
}

impl Echo {
    /// Answers until `shutdown` completes. Every answer is sent from the subscription's
    /// own task, the cheapest way a service can answer; a request that carries
    /// [`headers::TIMING_REQUEST`] gets [`headers::SERVER_MICROS`] as from the ledger.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let answering = async {
            loop {
                tokio::select! {
                    Some(request) = self.posts.next() => {
                        let received = Instant::now();
                        answer(&request, Bytes::from_static(ECHO_BODY.as_bytes()), received).await?;
                    }
                    Some(request) = self.topologies.next() => {
                        answer(&request, self.topology_body.clone(), Instant::now()).await?;
                    }
                    else => bail!("the echo's subscriptions ended"),
                }
            }
        };
        let result = tokio::select! {
            result = answering => result,
            () = shutdown => Ok(()),
        };
        self.client.flush().await.ok();
        result
    }
}

async fn answer(request: &async_nats::service::Request, body: Bytes, received: Instant) -> anyhow::Result<()> {
    let asks_timing = request.message.headers.as_ref().is_some_and(|headers| headers.get(headers::TIMING_REQUEST).is_some());
    let sent = if asks_timing {
        let mut reply_headers = HeaderMap::new();
        reply_headers.insert(headers::SERVER_MICROS, received.elapsed().as_micros().to_string().as_str());
        request.respond_with_headers(Ok(body), reply_headers).await
    } else {
        request.respond(Ok(body)).await
    };
    sent.context("send an answer")
}
