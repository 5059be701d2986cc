//! `ledgerctl`: the ledger for people, over the public NATS protocol (docs/PROTOCOL.md).
//! Readable tables by default, `--json` for scripts; a refused request prints its code
//! and message and exits with status 1.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ledger_core::currency::Currency;
use serde_json::{Value, json};
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

struct Client {
    nats: async_nats::Client,
    tenant: Uuid,
    timeout: Duration,
}

/// A refused request: the protocol's error object.
struct Refused {
    code: String,
    message: String,
    body: Value,
}

impl Client {
    async fn call(&self, operation: &str, body: &Value) -> anyhow::Result<Result<Value, Refused>> {
        let subject = if let Some(op) = operation.strip_prefix("admin.") {
            format!("ledger.v1.admin.{op}")
        } else {
            format!("ledger.v1.{}.{operation}", self.tenant.hyphenated())
        };
        let payload = serde_json::to_vec(body)?;
        let reply = tokio::time::timeout(self.timeout, self.nats.request(subject.clone(), payload.into()))
            .await
            .with_context(|| format!("no reply on {subject} within {:?}", self.timeout))?
            .with_context(|| format!("request on {subject} failed (is the cluster running?)"))?;
        let value: Value = serde_json::from_slice(&reply.payload).context("the reply is not JSON")?;
        let failed = reply.headers.as_ref().and_then(|h| h.get("Nats-Service-Error")).is_some();
        if failed || value.get("error").is_some() {
            let error = &value["error"];
            return Ok(Err(Refused {
                code: error["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
                message: error["message"].as_str().unwrap_or("").to_owned(),
                body: value.clone(),
            }));
        }
        Ok(Ok(value))
    }
}

fn money(amount_minor: i64, currency: &str) -> String {
    let units = Currency::parse(currency).map_or(0, |c| c.minor_units()) as u32;
    let value = amount_minor as i128;
    let sign = if value < 0 { "-" } else { "" };
    let scale = 10i128.pow(units);
    let whole = grouped(value.abs() / scale);
    if units == 0 {
        return format!("{sign}{whole} {currency}");
    }
    format!("{sign}{whole}.{:0width$} {currency}", value.abs() % scale, width = units as usize)
}

/// 1234567 -> "1,234,567"
fn grouped(value: i128) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

fn s(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_account(a: &Value) {
    let currency = s(&a["currency"]);
    println!("account {} ({})", s(&a["code"]), s(&a["account_id"]));
    println!(
        "  type {}  currency {}  status {}  allow_negative {}",
        s(&a["type"]),
        currency,
        s(&a["status"]),
        a["allow_negative"]
    );
    let b = &a["balance"];
    println!(
        "  balance {}  (debits {}, credits {}, {} entries)",
        money(b["balance_minor"].as_i64().unwrap_or(0), &currency),
        money(b["debits_minor"].as_i64().unwrap_or(0), &currency),
        money(b["credits_minor"].as_i64().unwrap_or(0), &currency),
        b["version"]
    );
    let held = b["held_minor"].as_i64().unwrap_or(0);
    if held != 0 {
        println!("  of which held until a cross-shard transaction settles: {}", money(held, &currency));
    }
}

fn print_entries(entries: &Value) {
    let rows: Vec<Vec<String>> = entries
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let currency = s(&e["currency"]);
            vec![
                s(&e["entry_seq"]),
                s(&e["account_id"]),
                s(&e["side"]),
                money(e["amount_minor"].as_i64().unwrap_or(0), &currency),
                money(e["balance_after_minor"].as_i64().unwrap_or(0), &currency),
            ]
        })
        .collect();
    table(&["#", "account", "side", "amount", "balance after"], &rows);
}

fn print_posted(reply: &Value) {
    let replayed = if reply["replayed"].as_bool() == Some(true) { " (replayed)" } else { "" };
    println!("transaction {} {} at {}{replayed}", s(&reply["ledger_tx_id"]), s(&reply["status"]), s(&reply["posted_at"]));
    print_entries(&reply["entries"]);
}

fn print_tx(tx: &Value) {
    println!("transaction {} {} {}", s(&tx["ledger_tx_id"]), s(&tx["type"]), s(&tx["status"]));
    println!("  posted {}  occurred {}  actor {}", s(&tx["posted_at"]), s(&tx["occurred_at"]), s(&tx["actor"]));
    if !tx["reverses_ledger_tx_id"].is_null() {
        println!("  reverses {}", s(&tx["reverses_ledger_tx_id"]));
    }
    if !tx["reversed_by_ledger_tx_id"].is_null() {
        println!("  reversed by {}", s(&tx["reversed_by_ledger_tx_id"]));
    }
    print_entries(&tx["entries"]);
}

fn print_statement(reply: &Value) {
    let rows: Vec<Vec<String>> = reply["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let currency = s(&e["currency"]);
            vec![
                s(&e["posted_at"]),
                s(&e["tx_type"]),
                s(&e["side"]),
                money(e["amount_minor"].as_i64().unwrap_or(0), &currency),
                money(e["balance_after_minor"].as_i64().unwrap_or(0), &currency),
                s(&e["ledger_tx_id"]),
            ]
        })
        .collect();
    table(&["posted", "type", "side", "amount", "balance after", "transaction"], &rows);
    if let Some(cursor) = reply["next_cursor"].as_str() {
        println!("  (more entries: cursor {cursor})");
    }
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

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let nats = async_nats::ConnectOptions::new()
        .name("ledgerctl")
        .connect(&cli.nats)
        .await
        .with_context(|| format!("connect to NATS at {}", cli.nats))?;
    let client = Client { nats, tenant: cli.tenant, timeout: Duration::from_millis(cli.timeout_ms) };
    let (operation, body, printer): (&str, Value, fn(&Value)) = match cli.command {
        Cmd::CreateAccount { code, account_type, currency, allow_negative, metadata } => {
            let metadata: Value = match metadata {
                Some(text) => serde_json::from_str(&text).context("--metadata must be JSON")?,
                None => json!({}),
            };
            let body = json!({"code": code, "type": account_type, "currency": currency,
                              "allow_negative": allow_negative, "metadata": metadata});
            ("accounts.create", body, print_account)
        }
        Cmd::Account { code } => ("accounts.get", json!({"account_code": code}), print_account),
        Cmd::SetStatus { code, status, actor, reason } => (
            "accounts.set_status",
            json!({"account_code": code, "status": status, "actor": actor, "reason_code": reason}),
            print_account,
        ),
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
            let mut body = json!({
                "idempotency_key": key, "type": tx_type, "actor": actor,
                "entries": [
                    {"account_code": from, "side": "DEBIT", "amount_minor": amount_minor, "currency": currency},
                    {"account_code": to, "side": "CREDIT", "amount_minor": amount_minor, "currency": currency},
                ],
            });
            if let Some(reference) = external_ref {
                body["external_ref"] = json!({"type": external_ref_type, "ref": reference});
            }
            if let Some(business_ref) = business_ref {
                body["business_ref"] = json!(business_ref);
            }
            ("transactions.post", body, print_posted)
        }
        Cmd::Post { body } => ("transactions.post", serde_json::from_str(&body).context("the body must be JSON")?, print_posted),
        Cmd::Tx { ledger_tx_id, key } => {
            let body = match (ledger_tx_id, key) {
                (Some(id), None) => json!({"ledger_tx_id": id}),
                (None, Some(key)) => json!({"idempotency_key": key}),
                _ => bail!("give a transaction id or --key"),
            };
            ("transactions.get", body, print_tx)
        }
        Cmd::Reverse { ledger_tx_id, key, actor, reason } => (
            "transactions.reverse",
            json!({"idempotency_key": key, "ledger_tx_id": ledger_tx_id, "actor": actor, "reason_code": reason}),
            print_posted,
        ),
        Cmd::Statement { code, limit, from, to } => {
            ("accounts.statement", json!({"account_code": code, "limit": limit, "from": from, "to": to}), print_statement)
        }
        Cmd::Topology => ("admin.topology", json!({}), |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())),
        Cmd::Audit => {
            // the audit scans every shard's journal: give it time unless told otherwise
            let patient = Client { timeout: client.timeout.max(Duration::from_secs(120)), ..client };
            let reply = patient.call("admin.audit", &json!({})).await?;
            let Ok(audit) = reply else { bail!("the audit was refused") };
            if cli.json {
                println!("{audit}");
            } else {
                print_audit(&audit);
            }
            return Ok(if audit["ok"] == true { 0 } else { 2 });
        }
        Cmd::RebuildBalances => {
            let patient = Client { timeout: client.timeout.max(Duration::from_secs(120)), ..client };
            let reply = patient.call("admin.rebuild_balances", &json!({})).await?;
            let Ok(rebuilt) = reply else { bail!("the rebuild was refused") };
            if cli.json {
                println!("{rebuilt}");
            } else {
                let empty = Vec::new();
                for shard in rebuilt["shards"].as_array().unwrap_or(&empty) {
                    println!("shard {}: {} balance rows rewritten", shard["shard_id"], shard["corrected_count"]);
                }
                for unreachable in rebuilt["unreachable_shards"].as_array().unwrap_or(&empty) {
                    println!("shard {} not rebuilt: {}", unreachable["shard_id"], unreachable["error"]);
                }
            }
            return Ok(if rebuilt["ok"] == true { 0 } else { 2 });
        }
        Cmd::Raw { operation, body } => {
            let body: Value = serde_json::from_str(&body).context("the body must be JSON")?;
            let reply = client.call(&operation, &body).await?;
            return Ok(match reply {
                Ok(value) => {
                    println!("{value}");
                    0
                }
                Err(refused) => {
                    println!("{}", refused.body);
                    1
                }
            });
        }
    };
    match client.call(operation, &body).await? {
        Ok(reply) => {
            if cli.json {
                println!("{reply}");
            } else {
                printer(&reply);
            }
            Ok(0)
        }
        Err(refused) => {
            if cli.json {
                println!("{}", refused.body);
            }
            eprintln!("refused: {}: {}", refused.code, refused.message);
            let saga = &refused.body["error"]["details"]["saga"];
            if saga.is_object() {
                let compensations: Vec<String> = saga["compensations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("step {} on shard {} by {}", c["step"], c["shard"], s(&c["ledger_tx_id"])))
                    .collect();
                eprintln!(
                    "  cross-shard saga {}: refused at step {} (shard {}); compensated: {}",
                    s(&saga["saga_id"]),
                    saga["failed_leg"]["step"],
                    saga["failed_leg"]["shard"],
                    if compensations.is_empty() { "nothing had posted".to_owned() } else { compensations.join(", ") },
                );
            }
            Ok(1)
        }
    }
}

fn print_audit(audit: &Value) {
    let empty = Vec::new();
    let count = |shard: &Value, list: &str| shard[list].as_array().map_or(0, Vec::len);
    println!(
        "{:>5}  {:>10}  {:>12}  {:>6}  {:>10}  {:>6}  {:>9}",
        "shard", "accounts", "transactions", "drift", "unbalanced", "sagas", "held legs"
    );
    for shard in audit["shards"].as_array().unwrap_or(&empty) {
        println!(
            "{:>5}  {:>10}  {:>12}  {:>6}  {:>10}  {:>6}  {:>9}",
            shard["shard_id"].to_string(),
            shard["accounts"].to_string(),
            shard["transactions"].to_string(),
            count(shard, "projection_drift") + count(shard, "unsettled_drift"),
            count(shard, "unbalanced_transactions"),
            count(shard, "sagas_in_flight"),
            count(shard, "held_legs"),
        );
    }
    for unreachable in audit["unreachable_shards"].as_array().unwrap_or(&empty) {
        println!("shard {} unreachable: {}", unreachable["shard_id"], unreachable["error"]);
    }
    let cluster = &audit["cluster"];
    for currency in cluster["currencies"].as_array().unwrap_or(&empty) {
        let mark = if currency["balanced"] == true { "balanced" } else { "NOT BALANCED" };
        println!(
            "{}: debits {} = credits {}: {mark}",
            currency["currency"].as_str().unwrap_or("?"),
            currency["debits_minor"].as_str().unwrap_or("?"),
            currency["credits_minor"].as_str().unwrap_or("?"),
        );
    }
    println!("sagas in flight: {}", cluster["sagas_in_flight"]);
    if cluster["holds_settled"] == false {
        println!("saga legs still held with no saga in flight: {}", cluster["held_legs"]);
    }
    for nonzero in cluster["clearing_nonzero"].as_array().unwrap_or(&empty) {
        println!(
            "clearing not settled: tenant {} {} sums to {}",
            nonzero["tenant_id"], nonzero["currency"], nonzero["sum_minor"]
        );
    }
    println!("audit: {}", if audit["ok"] == true { "ok" } else { "NOT OK" });
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_is_shown_in_major_units_with_grouping() {
        assert_eq!(super::money(50_000_000, "IDR"), "500,000.00 IDR");
        assert_eq!(super::money(-5, "USD"), "-0.05 USD");
        assert_eq!(super::money(1_234_567, "JPY"), "1,234,567 JPY");
        assert_eq!(super::money(1_001, "KWD"), "1.001 KWD");
    }
}
