//! `ledger-router --config cluster-config/local.toml`

// The hot paths allocate per request; mimalloc spends a fraction of glibc's time on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ledger_node::config::ClusterConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "The ledger's NATS front door (the `ledger` service)")]
struct Args {
    #[arg(long, env = "LEDGER_CONFIG", default_value = "cluster-config/local.toml")]
    config: PathBuf,
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
    ledger_router::run(config, shutdown).await
}
