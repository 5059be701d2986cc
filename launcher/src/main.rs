//! `ledger-router --config cluster-config/local.toml [--node node-0]`
//!
//! With `--node`, the process also runs that node of the config (its shard writers,
//! subscriptions and relays), and this router reaches the node's shards in-process.

// The hot paths allocate per request; mimalloc spends a fraction of glibc's time on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ledger_config::ClusterConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "The ledger's NATS front door (the `ledger` service)")]
struct Args {
    #[arg(long, env = "LEDGER_CONFIG", default_value = "cluster-config/local.toml")]
    config: PathBuf,
    /// Also run this node of the config in this process; requests for its shards then
    /// skip NATS. Other routers still reach them over NATS.
    #[arg(long, env = "LEDGER_EMBEDDED_NODE")]
    node: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = ClusterConfig::load(&args.config)?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match args.node {
        None => ledger_router::run(config, shutdown).await,
        Some(node_name) => ledger_launcher::run_with_node(config, &node_name, Default::default(), shutdown).await,
    }
}
