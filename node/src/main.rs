//! `ledger-node --config cluster-config/local.toml --node node-0`

// The hot paths allocate per request; mimalloc spends a fraction of glibc's time on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ledger_config::ClusterConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "A ledger node: the single writer of the shards it owns")]
struct Args {
    #[arg(long, env = "LEDGER_CONFIG", default_value = "cluster-config/local.toml")]
    config: PathBuf,
    #[arg(long, env = "LEDGER_NODE", default_value = "node-0")]
    node: String,
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
    ledger_node::server::run(config, &args.node, Default::default(), shutdown).await
}
