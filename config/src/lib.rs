//! # ledger-config
//!
//! Cluster configuration: the TOML topology files of `cluster-config/`. Routers and nodes
//! read the same file. A bad file is refused at start-up with the key and the problem.

use ledger_core::ids::SHARD_ID_MAX;
use ledger_core::ring::{HashRing, RingParams, ShardId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: ClusterSection,
    pub ring: RingSection,
    #[serde(default)]
    pub limits: Limits,
    pub shards: Vec<ShardConfig>,
    pub nodes: Vec<NodeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    pub nats_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingSection {
    pub virtual_nodes_per_shard: u32,
    /// The only hash the ring knows; named so that a future one is an explicit change.
    #[serde(default = "default_hash")]
    pub hash: String,
}

fn default_hash() -> String {
    RING_HASH.to_owned()
}

pub const RING_HASH: &str = ledger_core::ring::HASH_NAME;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most commands one shard writer decides and commits in one database transaction.
    pub batch_commands_max: usize,
    /// Most commands waiting for one shard writer; beyond it requests get SHARD_UNAVAILABLE.
    pub shard_queue_commands_max: usize,
    /// Most account states a shard writer keeps in memory.
    pub account_cache_max: usize,
    /// How long a router waits for a shard's answer.
    pub request_timeout_ms: u64,
    /// Most requests one router handles at once.
    pub router_in_flight_max: usize,
    /// An unfinished saga whose log has not moved for this long is resumed by the
    /// recovery loop of any router (its coordinator is presumed dead).
    pub saga_resume_after_ms: u64,
    /// How often each router looks for sagas to resume and claims to settle.
    pub saga_recovery_interval_ms: u64,
    /// A key or external-reference claim whose request has not been heard of for this long
    /// is settled by the claim sweeper of any router: the request's outcome where it was
    /// decided, or else `REQUEST_ABANDONED` (router/src/claims.rs). Must exceed
    /// `request_timeout_ms`, so that no request a router still waits for is abandoned.
    pub claim_abandon_after_ms: u64,
    /// Most shard writers of one node that write a batch to the same PostgreSQL server
    /// (host and port) at once; absent means no limit. About the server's cores: a writer
    /// that waits for its turn keeps taking commands, so its next batch is larger, and
    /// the server spends less CPU per transfer than on many small concurrent commits
    /// (docs/BENCHMARKS.md, "Writers take turns on their database server").
    pub batches_in_flight_per_database_server: Option<usize>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            batch_commands_max: 512,
            shard_queue_commands_max: 20_000,
            account_cache_max: 200_000,
            request_timeout_ms: 5_000,
            router_in_flight_max: 4_096,
            saga_resume_after_ms: 10_000,
            saga_recovery_interval_ms: 1_000,
            claim_abandon_after_ms: 600_000,
            batches_in_flight_per_database_server: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub id: ShardId,
    pub database_url: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_pool_size() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub shards: Vec<ShardId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {key}: {problem}")]
    Invalid { path: String, key: String, problem: String },
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        ClusterConfig::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.check().map_err(|(key, problem)| ConfigError::Invalid { path: path.to_owned(), key, problem })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, problem: &str| Err((key.to_owned(), problem.to_owned()));
        if self.cluster.name.trim().is_empty() {
            return fail("cluster.name", "must not be empty");
        }
        if !self.cluster.nats_url.starts_with("nats://") && !self.cluster.nats_url.starts_with("tls://") {
            return fail("cluster.nats_url", "must start with nats:// or tls://");
        }
        if !(1..=4096).contains(&self.ring.virtual_nodes_per_shard) {
            return fail("ring.virtual_nodes_per_shard", "must be 1-4096");
        }
        if self.ring.hash != RING_HASH {
            return fail("ring.hash", &format!("unknown hash; the only one is {RING_HASH:?}"));
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.batch_commands_max", limits.batch_commands_max),
            ("limits.shard_queue_commands_max", limits.shard_queue_commands_max),
            ("limits.account_cache_max", limits.account_cache_max),
            ("limits.request_timeout_ms", limits.request_timeout_ms as usize),
            ("limits.router_in_flight_max", limits.router_in_flight_max),
            ("limits.saga_resume_after_ms", limits.saga_resume_after_ms as usize),
            ("limits.saga_recovery_interval_ms", limits.saga_recovery_interval_ms as usize),
            ("limits.claim_abandon_after_ms", limits.claim_abandon_after_ms as usize),
        ] {
            if value == 0 {
                return fail(key, "must be greater than 0");
            }
        }
        if limits.batches_in_flight_per_database_server.is_some_and(|turns| !(1..=4096).contains(&turns)) {
            return fail("limits.batches_in_flight_per_database_server", "must be 1-4096 (leave it out for no limit)");
        }
        if limits.claim_abandon_after_ms <= limits.request_timeout_ms {
            return fail("limits.claim_abandon_after_ms", "must be greater than limits.request_timeout_ms");
        }
        if self.shards.is_empty() {
            return fail("shards", "at least one shard is needed");
        }
        let mut ids = BTreeSet::new();
        for (index, shard) in self.shards.iter().enumerate() {
            if shard.id > SHARD_ID_MAX {
                return fail(&format!("shards[{index}].id"), &format!("must be at most {SHARD_ID_MAX}"));
            }
            if !ids.insert(shard.id) {
                return fail(&format!("shards[{index}].id"), &format!("shard id {} appears twice", shard.id));
            }
            if !shard.database_url.starts_with("postgres://") && !shard.database_url.starts_with("postgresql://") {
                return fail(&format!("shards[{index}].database_url"), "must be a postgres:// URL");
            }
            if shard.pool_size < 2 {
                return fail(&format!("shards[{index}].pool_size"), "must be at least 2 (one writer, one reader)");
            }
        }
        let mut owners: BTreeMap<ShardId, &str> = BTreeMap::new();
        let mut names = BTreeSet::new();
        if self.nodes.is_empty() {
            return fail("nodes", "at least one node is needed");
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if !names.insert(node.name.as_str()) {
                return fail(&format!("nodes[{index}].name"), &format!("node name {:?} appears twice", node.name));
            }
            for shard in &node.shards {
                if !ids.contains(shard) {
                    return fail(&format!("nodes[{index}].shards"), &format!("shard {shard} is not in [[shards]]"));
                }
                if let Some(other) = owners.insert(*shard, &node.name) {
                    return fail(&format!("nodes[{index}].shards"), &format!("shard {shard} is already owned by node {other:?}"));
                }
            }
        }
        if let Some(orphan) = ids.iter().find(|id| !owners.contains_key(id)) {
            return fail("nodes", &format!("shard {orphan} is owned by no node"));
        }
        Ok(())
    }

    pub fn ring(&self) -> HashRing {
        let ids: Vec<ShardId> = self.shards.iter().map(|s| s.id).collect();
        HashRing::new(&ids, RingParams { virtual_nodes_per_shard: self.ring.virtual_nodes_per_shard })
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn shard(&self, id: ShardId) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.id == id)
    }

    pub fn owner_of(&self, id: ShardId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.shards.contains(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "t"
nats_url = "nats://127.0.0.1:4222"
[ring]
virtual_nodes_per_shard = 128
[[shards]]
id = 0
database_url = "postgres://postgres@127.0.0.1/a"
[[shards]]
id = 1
database_url = "postgres://postgres@127.0.0.1/b"
[[nodes]]
name = "n0"
shards = [0, 1]
"#;

    #[test]
    fn good_file_parses() {
        let config = ClusterConfig::parse(GOOD, "t.toml").unwrap();
        assert_eq!(config.ring().shards(), &[0, 1]);
        assert_eq!(config.limits.batch_commands_max, Limits::default().batch_commands_max);
        assert_eq!(config.limits.batches_in_flight_per_database_server, None);
        let limited = format!("{GOOD}\n[limits]\nbatches_in_flight_per_database_server = 2\n");
        assert_eq!(ClusterConfig::parse(&limited, "t.toml").unwrap().limits.batches_in_flight_per_database_server, Some(2));
    }

    #[test]
    fn bad_files_name_the_key() {
        let cases = [
            (GOOD.replace("id = 1", "id = 0"), "shards[1].id"),
            (GOOD.replace("shards = [0, 1]", "shards = [0]"), "nodes"),
            (GOOD.replace("shards = [0, 1]", "shards = [0, 1, 7]"), "nodes[0].shards"),
            (GOOD.replace("virtual_nodes_per_shard = 128", "virtual_nodes_per_shard = 0"), "ring.virtual_nodes_per_shard"),
            (GOOD.replace("nats://", "http://"), "cluster.nats_url"),
            (GOOD.replace("postgres://postgres@127.0.0.1/b", "mysql://x"), "shards[1].database_url"),
            (format!("{GOOD}\n[limits]\nbatch_commands_max = 0\n"), "limits.batch_commands_max"),
            (format!("{GOOD}\n[limits]\nclaim_abandon_after_ms = 5000\n"), "limits.claim_abandon_after_ms"),
            (
                format!("{GOOD}\n[limits]\nbatches_in_flight_per_database_server = 0\n"),
                "limits.batches_in_flight_per_database_server",
            ),
            (
                format!("{GOOD}\n[limits]\nbatches_in_flight_per_database_server = 5000\n"),
                "limits.batches_in_flight_per_database_server",
            ),
        ];
        for (text, key) in cases {
            let error = ClusterConfig::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(error.contains(key), "{error} should name {key}");
        }
        let unknown = ClusterConfig::parse(&GOOD.replace("[ring]", "[ring]\nvnodes = 3"), "t.toml").unwrap_err().to_string();
        assert!(unknown.contains("vnodes"), "{unknown}");
    }
}
