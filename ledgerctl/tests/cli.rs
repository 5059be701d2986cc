//! `ledgerctl` against a real cluster: it builds its requests and reads the replies with
//! the protocol's types, says a refusal with its code and status 1, and leaves quietly
//! when the reader of its output has gone.

use ledger_tests::Cluster;
use std::process::{Output, Stdio};
use tokio::process::Command;

fn ledgerctl(cluster: &Cluster, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerctl"));
    command.args(["--nats", &cluster.nats.url, "--tenant", &cluster.tenant.to_string()]).args(args);
    command
}

async fn run(cluster: &Cluster, args: &[&str]) -> Output {
    ledgerctl(cluster, args).output().await.expect("ledgerctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn ledgerctl_moves_money_and_shows_it_in_tables_and_json() {
    let cluster = Cluster::start(1).await;
    let created = run(&cluster, &["create-account", "cash", "--type", "ASSET", "--currency", "USD", "--allow-negative"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("account cash"), "{}", stdout(&created));
    run(&cluster, &["create-account", "wallet:ann", "--type", "LIABILITY", "--currency", "USD"]).await;

    let posted = run(&cluster, &["transfer", "cash", "wallet:ann", "2500", "USD", "--key", "top-up-1"]).await;
    assert!(posted.status.success(), "{}", stderr(&posted));
    assert!(stdout(&posted).contains("POSTED"), "{}", stdout(&posted));
    let again = run(&cluster, &["transfer", "cash", "wallet:ann", "2500", "USD", "--key", "top-up-1"]).await;
    assert!(stdout(&again).contains("(replayed)"), "{}", stdout(&again));

    let account = run(&cluster, &["account", "wallet:ann"]).await;
    assert!(stdout(&account).contains("balance 25.00 USD"), "{}", stdout(&account));
    assert_eq!(cluster.balance("wallet:ann").await, 2500);

    let tx = run(&cluster, &["--json", "tx", "--key", "top-up-1"]).await;
    let tx: serde_json::Value = serde_json::from_slice(&tx.stdout).expect("--json prints the reply as JSON");
    assert_eq!(tx["status"], "POSTED");
    let statement = run(&cluster, &["statement", "wallet:ann"]).await;
    assert!(stdout(&statement).contains(tx["ledger_tx_id"].as_str().unwrap()), "{}", stdout(&statement));

    let audit = run(&cluster, &["audit"]).await;
    assert_eq!(audit.status.code(), Some(0), "{}{}", stdout(&audit), stderr(&audit));
    assert!(stdout(&audit).contains("USD: debits 2500 = credits 2500: balanced"), "{}", stdout(&audit));
    let topology = run(&cluster, &["topology"]).await;
    assert!(stdout(&topology).contains("virtual nodes per shard"), "{}", stdout(&topology));
    let rebuilt = run(&cluster, &["rebuild-balances"]).await;
    assert!(stdout(&rebuilt).contains("shard 0: 0 balance rows rewritten"), "{}", stdout(&rebuilt));
    cluster.finish().await;
}

#[tokio::test]
async fn a_refusal_prints_its_code_and_exits_with_status_one() {
    let cluster = Cluster::start(1).await;
    cluster.create_account("cash", "ASSET", "USD", false).await;
    cluster.create_account("wallet:ann", "LIABILITY", "USD", false).await;
    let refused = run(&cluster, &["transfer", "wallet:ann", "cash", "1", "USD", "--key", "k"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).starts_with("refused: INSUFFICIENT_FUNDS: "), "{}", stderr(&refused));
    let unknown = run(&cluster, &["--json", "account", "nobody"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    let body: serde_json::Value = serde_json::from_slice(&unknown.stdout).expect("--json prints the refusal");
    assert_eq!(body["error"]["code"], "ACCOUNT_NOT_FOUND");
    let raw = run(&cluster, &["raw", "accounts.get", r#"{"account_code": "nobody", "extra": 1}"#]).await;
    assert_eq!(raw.status.code(), Some(1));
    assert!(stdout(&raw).contains("INVALID_REQUEST"), "{}", stdout(&raw));
    cluster.finish().await;
}

#[tokio::test]
async fn a_closed_pipe_ends_ledgerctl_quietly() {
    let cluster = Cluster::start(1).await;
    cluster.create_account("cash", "ASSET", "USD", true).await;
    // the reader is gone before ledgerctl has anything to write: its first line meets a
    // closed pipe, as under `ledgerctl topology | head -0`
    let mut child = ledgerctl(&cluster, &["topology"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).is_empty(), "no panic, no message: {}", stderr(&output));
    cluster.finish().await;
}
