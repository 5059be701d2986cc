//! `ledgerctl`: the ledger for people, over the public NATS protocol (docs/PROTOCOL.md).
//! Readable tables by default, `--json` for scripts; a refused request prints its code
//! and message and exits with status 1. Requests are built and replies read with the
//! protocol crate's types, so a change of the contract cannot skip this client.

mod client;
mod print;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use client::Client;
use ledger_protocol::admin::{AuditReport, RebuildReport, Topology};
use ledger_protocol::reply::{AccountObject, PostReply, StatementReply, TransactionObject};
use ledger_protocol::request::{
    AccountRef, CreateAccountRequest, EmptyRequest, EntryRequest, ExternalRefRequest, GetTransactionRequest, PostRequest,
    ReverseRequest, SetStatusRequest, StatementRequest,
};
use print::out;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// The tenant used when none is given: handy for a local cluster, never for production.
const DEMO_TENANT: &str = "00000000-0000-4000-8000-000000000001";

#[derive(Parser)]
#[command(name = "ledgerctl", about = "Talk to the ledger cluster over NATS")]
struct Cli {
    #[arg(long, env = "LEDGER_NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    nats: String,
    #[arg(long, env = "LEDGER_TENANT", default_value = DEMO_TENANT, global = true)]
    tenant: Uuid,
    /// Print the raw JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an account (a repeat with the same attributes returns it again).
    CreateAccount {
        code: String,
        #[arg(long = "type")]
        account_type: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        allow_negative: bool,
        /// JSON object
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Show an account and its balance.
    Account { code: String },
    /// Set an account's status: ACTIVE, FROZEN or CLOSED.
    SetStatus {
        code: String,
        status: String,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move money between two accounts of one currency: debit FROM, credit TO.
    Transfer {
        from: String,
        to: String,
        amount_minor: i64,
        currency: String,
        #[arg(long)]
        key: String,
        #[arg(long = "type", default_value = "TRANSFER")]
        tx_type: String,
        #[arg(long, default_value = "ledgerctl")]
        actor: String,
        #[arg(long)]
        external_ref: Option<String>,
        #[arg(long, default_value = "ledgerctl")]
        external_ref_type: String,
        #[arg(long)]
        business_ref: Option<String>,
    },
    /// Post a transaction given as a JSON body of `transactions.post`.
    Post { body: String },
    /// Show a transaction by id (or --key).
    Tx {
        ledger_tx_id: Option<Uuid>,
        #[arg(long)]
        key: Option<String>,
    },
    /// Reverse a transaction.
    Reverse {
        ledger_tx_id: Uuid,
        #[arg(long)]
        key: String,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: String,
    },
    /// Print an account's statement, oldest entry first.
    Statement {
        code: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
    /// Shards, nodes and ring parameters.
    Topology,
    /// Check the ledger: projection drift, unbalanced transactions, debits = credits per
    /// currency, clearing accounts, sagas in flight. Exits 2 when the audit is not ok.
    Audit,
    /// Repair: recompute every shard's balance projection from its journal, rewriting the
    /// rows that drifted (run `audit` first to see which). Exits 2 if a shard could not.
    RebuildBalances,
    /// Send any request: `ledgerctl raw accounts.get '{"account_code":"x"}'` (admin: `admin.topology`).
    Raw { operation: String, body: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    }
}

/// How long the operator scans (audit, rebuild) may take at least.
const SCAN_TIMEOUT: Duration = Duration::from_secs(120);

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let nats = async_nats::ConnectOptions::new()
        .name("ledgerctl")
        .connect(&cli.nats)
        .await
        .with_context(|| format!("connect to NATS at {}", cli.nats))?;
    let client = Client { nats, tenant: cli.tenant, timeout: Duration::from_millis(cli.timeout_ms) };
    let json = cli.json;
    match cli.command {
        Cmd::CreateAccount { code, account_type, currency, allow_negative, metadata } => {
            let metadata =
                metadata.map(|text| serde_json::from_str::<Value>(&text)).transpose().context("--metadata must be JSON")?;
            let request = CreateAccountRequest { code, account_type, currency, allow_negative, metadata };
            show::<_, AccountObject>(&client, json, "accounts.create", &request, print::account).await
        }
        Cmd::Account { code } => {
            let request = AccountRef { account_code: Some(code), ..Default::default() };
            show::<_, AccountObject>(&client, json, "accounts.get", &request, print::account).await
        }
        Cmd::SetStatus { code, status, actor, reason } => {
            let request = SetStatusRequest { account_code: Some(code), status, actor, reason_code: reason, ..Default::default() };
            show::<_, AccountObject>(&client, json, "accounts.set_status", &request, print::account).await
        }
        Cmd::Transfer {
            from,
            to,
            amount_minor,
            currency,
            key,
            tx_type,
            actor,
            external_ref,
            external_ref_type,
            business_ref,
        } => {
            let entry = |code: String, side: &str| EntryRequest {
                account_code: Some(code),
                side: side.to_owned(),
                amount_minor,
                currency: currency.clone(),
                ..Default::default()
            };
            let request = PostRequest {
                idempotency_key: key,
                tx_type,
                entries: vec![entry(from, "DEBIT"), entry(to, "CREDIT")],
                external_ref: external_ref.map(|reference| ExternalRefRequest { ref_type: external_ref_type, reference }),
                business_ref,
                actor,
                ..Default::default()
            };
            show::<_, PostReply>(&client, json, "transactions.post", &request, print::posted).await
        }
        Cmd::Post { body } => {
            let request: PostRequest = serde_json::from_str(&body).context("the body must be a transactions.post request")?;
            show::<_, PostReply>(&client, json, "transactions.post", &request, print::posted).await
        }
        Cmd::Tx { ledger_tx_id, key } => {
            let request = match (ledger_tx_id, key) {
                (Some(id), None) => GetTransactionRequest { ledger_tx_id: Some(id), ..Default::default() },
                (None, Some(key)) => GetTransactionRequest { idempotency_key: Some(key), ..Default::default() },
                _ => bail!("give a transaction id or --key"),
            };
            show::<_, TransactionObject>(&client, json, "transactions.get", &request, print::transaction).await
        }
        Cmd::Reverse { ledger_tx_id, key, actor, reason } => {
            let request = ReverseRequest { idempotency_key: key, ledger_tx_id, actor, reason_code: reason };
            show::<_, PostReply>(&client, json, "transactions.reverse", &request, print::posted).await
        }
        Cmd::Statement { code, limit, from, to } => {
            let request =
                StatementRequest { account_code: Some(code), limit: Some(limit.into()), from, to, ..Default::default() };
            show::<_, StatementReply>(&client, json, "accounts.statement", &request, print::statement).await
        }
        Cmd::Topology => show::<_, Topology>(&client, json, "admin.topology", &EmptyRequest {}, print::topology).await,
        Cmd::Audit => {
            let Ok(answer) = client.patient(SCAN_TIMEOUT).call::<_, AuditReport>("admin.audit", &EmptyRequest {}).await? else {
                bail!("the audit was refused")
            };
            if json {
                out!("{}", answer.raw)
            } else {
                print::audit(&answer.reply)
            }
            Ok(if answer.reply.ok { 0 } else { 2 })
        }
        Cmd::RebuildBalances => {
            let Ok(answer) =
                client.patient(SCAN_TIMEOUT).call::<_, RebuildReport>("admin.rebuild_balances", &EmptyRequest {}).await?
            else {
                bail!("the rebuild was refused")
            };
            if json {
                out!("{}", answer.raw)
            } else {
                print::rebuilt(&answer.reply)
            }
            Ok(if answer.reply.ok { 0 } else { 2 })
        }
        Cmd::Raw { operation, body } => {
            let body: Value = serde_json::from_str(&body).context("the body must be JSON")?;
            Ok(match client.call::<_, Value>(&operation, &body).await? {
                Ok(answer) => {
                    out!("{}", answer.raw);
                    0
                }
                Err(refused) => {
                    out!("{}", refused.raw);
                    1
                }
            })
        }
    }
}

/// Sends one request and shows its answer: a table, or the JSON with `--json`; a refusal
/// on stderr, exit status 1.
async fn show<Req: Serialize, Rep: DeserializeOwned>(
    client: &Client,
    json: bool,
    operation: &str,
    request: &Req,
    print: fn(&Rep),
) -> anyhow::Result<i32> {
    match client.call::<Req, Rep>(operation, request).await? {
        Ok(answer) => {
            if json {
                out!("{}", answer.raw)
            } else {
                print(&answer.reply)
            }
            Ok(0)
        }
        Err(refused) => {
            if json {
                out!("{}", refused.raw);
            }
            let error = &refused.reply.error;
            eprintln!("refused: {}: {}", error.code, error.message);
            print::saga_refusal(&error.details);
            Ok(1)
        }
    }
}
