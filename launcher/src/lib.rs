//! # ledger-launcher
//!
//! The one place that knows both the router and the node: it runs a node of the config
//! and a router beside it in one process, the router reaching that node's shards
//! in-process through [`ledger_router::InProcessShards`] and every other shard over NATS
//! as any router does. The `ledger-router` binary is built here for that reason.

use futures::future::BoxFuture;
use ledger_config::ClusterConfig;
use ledger_core::command::Command;
use ledger_core::ring::ShardId;
use ledger_node::server::{LocalShards, NodeHandles};
use ledger_protocol::internal::{ShardReply, ShardRequest};
use ledger_router::InProcessShards;
use std::future::Future;
use std::sync::Arc;

/// Runs node `node_name` of `config` and a router beside it in this process until
/// `shutdown` resolves.
pub async fn run_with_node(
    config: ClusterConfig,
    node_name: &str,
    handles: NodeHandles,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = ledger_node::server::start(&config, node_name, handles).await?;
    let local = Arc::new(NodeShards(node.local_shards()));
    let served = ledger_router::run_beside(config, local, shutdown).await;
    node.stop().await;
    served
}

/// A node's shards as the router sees them.
struct NodeShards(LocalShards);

impl InProcessShards for NodeShards {
    fn owns(&self, shard: ShardId) -> bool {
        self.0.get(shard).is_some()
    }

    fn request(&self, shard: ShardId, request: ShardRequest) -> BoxFuture<'static, ShardReply> {
        match self.0.get(shard) {
            Some(local) => Box::pin(async move { local.request(request).await }),
            None => Box::pin(std::future::ready(not_here(shard))),
        }
    }

    fn write(&self, shard: ShardId, commands: Vec<Command>) -> BoxFuture<'static, Vec<ShardReply>> {
        match self.0.get(shard) {
            Some(local) => Box::pin(async move { local.write(commands).await }),
            None => Box::pin(std::future::ready(vec![not_here(shard); commands.len()])),
        }
    }
}

fn not_here(shard: ShardId) -> ShardReply {
    ShardReply::internal(&format!("shard {shard} is not in this process"))
}
