//! `ledger-echo [--nats URL] [--shards N]`: answers the ledger's post and topology
//! subjects at once, with no ledger behind it (a diagnostic for benchmarks; see
//! `ledger_load::echo`). It refuses to start where a ledger already serves.

// The same allocator as the ledger's binaries, so that the floor is measured alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ledger_load::echo::{self, EchoTopology};

#[derive(Parser)]
#[command(about = "Answer the ledger's post subject with nothing behind it: the message path's floor, for benchmarks")]
struct Args {
    #[arg(long, env = "LEDGER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Shards the echo's topology reports (a load generator places keys by them).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards: u16,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    virtual_nodes_per_shard: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::ConnectOptions::new()
        .name(echo::ECHO_SERVICE)
        .connect(&args.nats)
        .await
        .map_err(|e| anyhow::anyhow!("connect to NATS at {}: {e}", args.nats))?;
    let topology = EchoTopology { shards: args.shards, virtual_nodes_per_shard: args.virtual_nodes_per_shard };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let echo = echo::start(client, topology).await?;
    eprintln!("ledger-echo serving {} and {} on {} (nothing is posted)", echo::POST_SUBJECT, echo::TOPOLOGY_SUBJECT, args.nats);
    echo.run(shutdown).await
}
