//! A node or a router as its own process, for the fault-injection tests (which SIGKILL
//! them): `ledger-proc node <config> <node-name>`, `ledger-proc router <config>`, or
//! `ledger-proc router <config> <node-name>` (a router beside that node, as
//! `ledger-router --node` runs it). The
//! same code as the `ledger-node` and `ledger-router` binaries, built with the router's
//! test-only fault hooks (see `ledger_router::faults`).

use ledger_config::ClusterConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match args.get(1).map(String::as_str) {
        Some("node") if args.len() == 4 => {
            let config = ClusterConfig::load(std::path::Path::new(&args[2]))?;
            ledger_node::server::run(config, &args[3], Default::default(), shutdown).await
        }
        Some("router") if args.len() == 3 => {
            let config = ClusterConfig::load(std::path::Path::new(&args[2]))?;
            ledger_router::run(config, shutdown).await
        }
        Some("router") if args.len() == 4 => {
            let config = ClusterConfig::load(std::path::Path::new(&args[2]))?;
            ledger_launcher::run_with_node(config, &args[3], Default::default(), shutdown).await
        }
        _ => anyhow::bail!("usage: ledger-proc node <config> <node-name> | ledger-proc router <config> [<node-name>]"),
    }
}
