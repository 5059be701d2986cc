//! Tables for people. Everything goes through [`out!`], which ends the program quietly
//! when the reader has gone (`ledgerctl statement x | head`).

use ledger_core::currency::Currency;
use ledger_protocol::admin::{AuditReport, RebuildReport, Topology};
use ledger_protocol::reply::{AccountObject, EntryReply, PostReply, StatementReply, TransactionObject, TxStatus};
use serde_json::Value;

/// `println!` that exits quietly, status 0, once stdout is closed: a reader that took
/// what it wanted is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
pub(crate) use out;

pub fn money(amount_minor: i64, currency: &str) -> String {
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
        out!("  {}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

fn status(status: TxStatus) -> &'static str {
    match status {
        TxStatus::Posted => "POSTED",
        TxStatus::Reversed => "REVERSED",
    }
}

pub fn account(a: &AccountObject) {
    out!("account {} ({})", a.code, a.account_id);
    out!("  type {}  currency {}  status {}  allow_negative {}", a.account_type, a.currency, a.status, a.allow_negative);
    let b = &a.balance;
    out!(
        "  balance {}  (debits {}, credits {}, {} entries)",
        money(b.balance_minor, &a.currency),
        money(b.debits_minor, &a.currency),
        money(b.credits_minor, &a.currency),
        b.version
    );
    if b.held_minor != 0 {
        out!("  of which held until a cross-shard transaction settles: {}", money(b.held_minor, &a.currency));
    }
}

fn entries(entries: &[EntryReply]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.entry_seq.to_string(),
                e.account_id.to_string(),
                e.side.as_str().to_owned(),
                money(e.amount_minor, &e.currency),
                money(e.balance_after_minor, &e.currency),
            ]
        })
        .collect();
    table(&["#", "account", "side", "amount", "balance after"], &rows);
}

pub fn posted(reply: &PostReply) {
    let replayed = if reply.replayed { " (replayed)" } else { "" };
    out!(
        "transaction {} {} at {}{replayed}",
        reply.ledger_tx_id,
        status(reply.status),
        ledger_protocol::format_time(reply.posted_at)
    );
    entries(&reply.entries);
}

pub fn transaction(tx: &TransactionObject) {
    out!("transaction {} {} {}", tx.ledger_tx_id, tx.tx_type, status(tx.status));
    out!(
        "  posted {}  occurred {}  actor {}",
        ledger_protocol::format_time(tx.posted_at),
        ledger_protocol::format_time(tx.occurred_at),
        tx.actor
    );
    if let Some(original) = tx.reverses_ledger_tx_id {
        out!("  reverses {original}");
    }
    if let Some(reversal) = tx.reversed_by_ledger_tx_id {
        out!("  reversed by {reversal}");
    }
    entries(&tx.entries);
}

pub fn statement(reply: &StatementReply) {
    let rows: Vec<Vec<String>> = reply
        .entries
        .iter()
        .map(|e| {
            vec![
                ledger_protocol::format_time(e.posted_at),
                e.tx_type.clone(),
                e.side.clone(),
                money(e.amount_minor, &e.currency),
                money(e.balance_after_minor, &e.currency),
                e.ledger_tx_id.to_string(),
            ]
        })
        .collect();
    table(&["posted", "type", "side", "amount", "balance after", "transaction"], &rows);
    if let Some(cursor) = &reply.next_cursor {
        out!("  (more entries: cursor {cursor})");
    }
}

/// The refusal's cross-shard story, when it has one (`details.saga`).
pub fn saga_refusal(details: &Value) {
    let saga = &details["saga"];
    if !saga.is_object() {
        return;
    }
    let compensations: Vec<String> = saga["compensations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("step {} on shard {} by {}", c["step"], c["shard"], text(&c["ledger_tx_id"])))
        .collect();
    eprintln!(
        "  cross-shard saga {}: refused at step {} (shard {}); compensated: {}",
        text(&saga["saga_id"]),
        saga["failed_leg"]["step"],
        saga["failed_leg"]["shard"],
        if compensations.is_empty() { "nothing had posted".to_owned() } else { compensations.join(", ") },
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The audit: a line per shard, then the cluster's checks.
pub fn audit(audit: &AuditReport) {
    out!(
        "{:>5}  {:>10}  {:>12}  {:>6}  {:>10}  {:>6}  {:>9}",
        "shard",
        "accounts",
        "transactions",
        "drift",
        "unbalanced",
        "sagas",
        "held legs"
    );
    for shard in &audit.shards {
        out!(
            "{:>5}  {:>10}  {:>12}  {:>6}  {:>10}  {:>6}  {:>9}",
            shard.shard_id,
            shard.accounts,
            shard.transactions,
            shard.projection_drift.len() + shard.unsettled_drift.len(),
            shard.unbalanced_transactions.len(),
            shard.sagas_in_flight.len(),
            shard.held_legs.len(),
        );
    }
    for unreachable in &audit.unreachable_shards {
        out!("shard {} unreachable: {}", unreachable.shard_id, unreachable.error);
    }
    let cluster = &audit.cluster;
    for currency in &cluster.currencies {
        let mark = if currency.balanced { "balanced" } else { "NOT BALANCED" };
        out!("{}: debits {} = credits {}: {mark}", currency.currency, currency.debits_minor, currency.credits_minor);
    }
    out!("sagas in flight: {}", cluster.sagas_in_flight);
    if !cluster.holds_settled {
        out!("saga legs still held with no saga in flight: {}", cluster.held_legs);
    }
    for nonzero in &cluster.clearing_nonzero {
        out!("clearing not settled: tenant {} {} sums to {}", nonzero.tenant_id, nonzero.currency, nonzero.sum_minor);
    }
    out!("audit: {}", if audit.ok { "ok" } else { "NOT OK" });
}

pub fn rebuilt(rebuilt: &RebuildReport) {
    for shard in &rebuilt.shards {
        out!("shard {}: {} balance rows rewritten", shard.shard_id, shard.corrected_count);
    }
    for unreachable in &rebuilt.unreachable_shards {
        out!("shard {} not rebuilt: {}", unreachable.shard_id, unreachable.error);
    }
}

pub fn topology(topology: &Topology) {
    out!("cluster {}", topology.cluster);
    let ring = &topology.ring;
    out!("ring: {} virtual nodes per shard, hash {}, {} probes", ring.virtual_nodes_per_shard, ring.hash, ring.probes);
    let rows: Vec<Vec<String>> =
        topology.shards.iter().map(|s| vec![s.shard_id.to_string(), s.node.clone().unwrap_or_else(|| "-".to_owned())]).collect();
    table(&["shard", "node"], &rows);
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
