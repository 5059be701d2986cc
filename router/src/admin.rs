//! The operator operations (`ledger.v1.admin.*`) and the recovery loop.

use crate::*;
use ledger_core::rejection::Rejection;
use ledger_protocol::admin::{RebuildReport, RingParameters, Topology, TopologyNode, TopologyShard, UnreachableShard};
use ledger_protocol::internal::{ShardReply, ShardRequest};
use ledger_protocol::request::{EmptyRequest, parse};
use std::time::Duration;

impl Router {
    pub(crate) async fn admin(&self, operation: &str, payload: &[u8]) -> Result<ShardReply, Rejection> {
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
    pub(crate) async fn audit(&self) -> ShardReply {
        // full scans of every shard: allowed far longer than a request
        let reads = self
            .ring
            .shards()
            .iter()
            .map(|shard| async move { (*shard, self.link.send_within(AUDIT_TIMEOUT, *shard, &ShardRequest::Audit).await) });
        let mut parts = Vec::new();
        let mut unreachable = Vec::new();
        for (shard, reply) in futures::future::join_all(reads).await {
            match reply.data::<ledger_protocol::internal::ShardAudit>("audit") {
                Ok(part) => parts.push(part),
                Err(failed) => unreachable.push(UnreachableShard { shard_id: shard, error: failed.body_value() }),
            }
        }
        ShardReply::ok(&audit::summarize(&parts, unreachable))
    }

    /// The recovery loop, forever: on every shard, the sagas whose coordinator stopped and
    /// the claims whose router died (`saga.rs`, `claims.rs`).
    pub(crate) async fn recover(&self) {
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
    pub(crate) async fn rebuild_balances(&self) -> ShardReply {
        let rebuilds = self.ring.shards().iter().map(|shard| async move {
            (*shard, self.link.send_within(AUDIT_TIMEOUT, *shard, &ShardRequest::RebuildBalances).await)
        });
        let mut shards = Vec::new();
        let mut unreachable = Vec::new();
        for (shard, reply) in futures::future::join_all(rebuilds).await {
            match reply.data::<ledger_protocol::internal::RebuiltBalances>("rebuilt balances") {
                Ok(part) => shards.push(part),
                Err(failed) => unreachable.push(UnreachableShard { shard_id: shard, error: failed.body_value() }),
            }
        }
        let corrected_count: i64 = shards.iter().map(|s| s.corrected_count).sum();
        ShardReply::ok(&RebuildReport { ok: unreachable.is_empty(), corrected_count, shards, unreachable_shards: unreachable })
    }

    pub fn topology(&self) -> Topology {
        let shards = self
            .config
            .shards
            .iter()
            .map(|s| TopologyShard { shard_id: s.id, node: self.config.owner_of(s.id).map(|n| n.name.clone()) })
            .collect();
        let nodes = self.config.nodes.iter().map(|n| TopologyNode { name: n.name.clone(), shards: n.shards.clone() }).collect();
        let virtual_nodes_per_shard = self.ring.params().virtual_nodes_per_shard;
        Topology {
            cluster: self.config.cluster.name.clone(),
            shards,
            nodes,
            ring: RingParameters {
                virtual_nodes_per_shard,
                hash: self.config.ring.hash.clone(),
                points: self.ring.shards().len() as u64 * virtual_nodes_per_shard as u64,
                probes: ledger_core::ring::PROBES,
            },
            diagnostic_echo: false,
        }
    }
}
