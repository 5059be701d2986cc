//! The operator operations' replies (`ledger.v1.admin.*`), typed: built by the router,
//! read by `ledgerctl` and `ledger-load` with the same types.

use crate::internal::{RebuiltBalances, ShardAudit};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// `ledger.v1.admin.topology`: where shards live and how the ring places accounts and keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub cluster: String,
    pub shards: Vec<TopologyShard>,
    pub nodes: Vec<TopologyNode>,
    pub ring: RingParameters,
    /// Set only by `ledger-echo`, which answers with nothing behind it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diagnostic_echo: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyShard {
    pub shard_id: u16,
    /// The node that owns it, if the config names one.
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyNode {
    pub name: String,
    pub shards: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingParameters {
    pub virtual_nodes_per_shard: u32,
    pub hash: String,
    pub points: u64,
    pub probes: u64,
}

/// `ledger.v1.admin.audit`: every shard's part and the checks only the cluster can make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub ok: bool,
    pub shards: Vec<ShardAudit>,
    pub unreachable_shards: Vec<UnreachableShard>,
    pub cluster: ClusterChecks,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterChecks {
    pub currencies: Vec<CurrencyBalance>,
    pub sagas_in_flight: usize,
    pub clearing_nonzero: Vec<ClearingImbalance>,
    pub clearing_settled: bool,
    pub held_legs: usize,
    pub holds_settled: bool,
}

/// Debits and credits of one currency over the cluster, as decimal strings (they may pass
/// 2^63).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrencyBalance {
    pub currency: String,
    pub debits_minor: String,
    pub credits_minor: String,
    pub balanced: bool,
}

/// A tenant's clearing accounts of one currency that do not sum to zero over the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearingImbalance {
    pub tenant_id: Uuid,
    pub currency: String,
    pub sum_minor: String,
}

/// A shard that did not give its part, with the refusal it answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnreachableShard {
    pub shard_id: u16,
    pub error: Value,
}

/// `ledger.v1.admin.rebuild_balances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildReport {
    pub ok: bool,
    pub corrected_count: i64,
    pub shards: Vec<RebuiltBalances>,
    pub unreachable_shards: Vec<UnreachableShard>,
}
