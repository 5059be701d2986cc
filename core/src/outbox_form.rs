//! How an event is kept in the outbox table: its published form less what the row's
//! own columns already say.
//!
//! Every byte a shard writes per transfer is a byte the disk must take in (see
//! docs/BENCHMARKS.md, "Lighter outbox rows": unsynced table growth is what the kernel flushes in the
//! bursts that stall commits), and the outbox row was the largest part of a transfer's
//! footprint: its payload repeated the event id, type, tenant and transaction id, which
//! are columns of the same row, spelled out null references, and named every field of
//! every entry. The batch planner writes the stored form directly
//! ([`crate::batch`]); the relay turns it back into the event docs/PROTOCOL.md
//! describes with [`published_payload`] before it publishes.
//!
//! The stored form of an event is its published form without:
//! - `event_id`, `event_type` and `tenant_id` (the row's `outbox_id`, `event_type` and
//!   `tenant_id`);
//! - the aggregate's id (`ledger_tx_id` of a transaction event, `account_id` of an
//!   account event: the row's `aggregate_id`);
//! - the keys of the event type's [`nullable_keys`] that are null ([`drop_null_keys`]);
//!
//! and each entry `{"account_id", "side", "amount_minor", "currency"}` of a transaction
//! event is the array `[account_id, side, amount_minor, currency]` ([`stored_entry`]).
//!
//! A stored payload that holds `event_id` (rows written before this form) is published as
//! it is.

use crate::currency::Currency;
use crate::money::Side;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The outbox row's columns that an event's payload need not repeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventColumns<'a> {
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: Uuid,
    pub event_type: &'a str,
}

const ENTRY_FIELDS: [&str; 4] = ["account_id", "side", "amount_minor", "currency"];

/// The payload key that carries the aggregate's id, by aggregate type.
fn aggregate_key(aggregate_type: &str) -> Option<&'static str> {
    match aggregate_type {
        "transaction" => Some("ledger_tx_id"),
        "account" => Some("account_id"),
        _ => None,
    }
}

/// Keys an event type always carries, null when they do not apply.
pub fn nullable_keys(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "transaction.posted" | "transaction.reversed" => &["reverses_ledger_tx_id", "external_ref", "business_ref"],
        "account.status_changed" => &["reason_code"],
        _ => &[],
    }
}

fn is_transaction_event(event_type: &str) -> bool {
    event_type.starts_with("transaction.")
}

/// Drops the event type's nullable keys that are null from a payload being stored.
pub fn drop_null_keys(event_type: &str, payload: &mut Value) {
    if let Value::Object(fields) = payload {
        for key in nullable_keys(event_type) {
            if fields.get(*key).is_some_and(Value::is_null) {
                fields.remove(*key);
            }
        }
    }
}

/// One entry of a transaction event, as stored.
pub fn stored_entry(account_id: Uuid, side: Side, amount_minor: i64, currency: Currency) -> Value {
    json!([account_id, side, amount_minor, currency])
}

/// The event to publish for a stored payload.
pub fn published_payload(columns: EventColumns<'_>, stored: Value) -> Value {
    let Value::Object(mut fields) = stored else { return stored };
    if fields.contains_key("event_id") {
        return Value::Object(fields);
    }
    fields.insert("event_id".into(), Value::String(columns.event_id.to_string()));
    fields.insert("event_type".into(), Value::String(columns.event_type.to_owned()));
    fields.insert("tenant_id".into(), Value::String(columns.tenant_id.to_string()));
    if let Some(key) = aggregate_key(columns.aggregate_type) {
        fields.insert(key.into(), Value::String(columns.aggregate_id.to_string()));
    }
    for key in nullable_keys(columns.event_type) {
        fields.entry(*key).or_insert(Value::Null);
    }
    if is_transaction_event(columns.event_type)
        && let Some(Value::Array(entries)) = fields.get_mut("entries")
    {
        for entry in entries {
            if let Value::Array(values) = entry
                && values.len() == ENTRY_FIELDS.len()
            {
                let named: Map<String, Value> =
                    ENTRY_FIELDS.iter().map(|name| (*name).to_owned()).zip(values.drain(..)).collect();
                *entry = Value::Object(named);
            }
        }
    }
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn columns(event_type: &'static str, aggregate_type: &'static str, aggregate_id: Uuid) -> EventColumns<'static> {
        EventColumns {
            event_id: Uuid::from_u128(0xe1),
            tenant_id: Uuid::from_u128(0x7e),
            aggregate_type,
            aggregate_id,
            event_type,
        }
    }

    fn idr() -> Currency {
        Currency::parse("IDR").unwrap()
    }

    #[test]
    fn a_stored_transfer_is_published_whole() {
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x1d));
        let mut stored = json!({
            "type": "TRANSFER", "commit_seq": 7, "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
            "reverses_ledger_tx_id": null, "external_ref": null, "business_ref": null,
            "entries": [
                stored_entry(Uuid::from_u128(0xa1), Side::Debit, 42, idr()),
                stored_entry(Uuid::from_u128(0xa2), Side::Credit, 42, idr()),
            ],
        });
        drop_null_keys(cols.event_type, &mut stored);
        assert_eq!(stored.as_object().unwrap().len(), 5, "null references are not stored: {stored}");
        assert_eq!(
            published_payload(cols, stored),
            json!({
                "event_id": Uuid::from_u128(0xe1), "event_type": "transaction.posted", "tenant_id": Uuid::from_u128(0x7e),
                "ledger_tx_id": Uuid::from_u128(0x1d), "type": "TRANSFER", "commit_seq": 7,
                "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
                "reverses_ledger_tx_id": null, "external_ref": null, "business_ref": null,
                "entries": [
                    {"account_id": Uuid::from_u128(0xa1), "side": "DEBIT", "amount_minor": 42, "currency": "IDR"},
                    {"account_id": Uuid::from_u128(0xa2), "side": "CREDIT", "amount_minor": 42, "currency": "IDR"},
                ],
            })
        );
    }

    #[test]
    fn references_that_are_set_are_kept() {
        let cols = columns("transaction.reversed", "transaction", Uuid::from_u128(0x1d));
        let mut stored = json!({
            "type": "TRANSFER", "external_ref": {"type": "PSP", "id": "x-1"}, "reverses_ledger_tx_id": Uuid::from_u128(0x0d),
            "business_ref": null, "entries": [],
        });
        drop_null_keys(cols.event_type, &mut stored);
        assert_eq!(stored["external_ref"], json!({"type": "PSP", "id": "x-1"}));
        let published = published_payload(cols, stored);
        assert_eq!(published["reverses_ledger_tx_id"], json!(Uuid::from_u128(0x0d)));
        assert_eq!(published["business_ref"], Value::Null);
    }

    #[test]
    fn only_the_event_types_nullable_keys_are_dropped() {
        let mut stored = json!({"from": "ACTIVE", "to": "FROZEN", "actor": null, "reason_code": null});
        drop_null_keys("account.status_changed", &mut stored);
        assert_eq!(stored, json!({"from": "ACTIVE", "to": "FROZEN", "actor": null}));
        let account = Uuid::from_u128(0xa1);
        assert_eq!(
            published_payload(columns("account.status_changed", "account", account), stored),
            json!({
                "event_id": Uuid::from_u128(0xe1), "event_type": "account.status_changed", "tenant_id": Uuid::from_u128(0x7e),
                "account_id": account, "from": "ACTIVE", "to": "FROZEN", "actor": null, "reason_code": null,
            })
        );
    }

    #[test]
    fn a_payload_stored_whole_is_published_as_it_is() {
        // rows written before the stored form
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x1d));
        let whole = json!({
            "event_id": Uuid::from_u128(0xe1), "event_type": "transaction.posted", "ledger_tx_id": Uuid::from_u128(0x1d),
            "entries": [{"account_id": Uuid::from_u128(0xa1), "side": "DEBIT", "amount_minor": 1, "currency": "IDR"}],
        });
        assert_eq!(published_payload(cols, whole.clone()), whole);
    }

    fn optional_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of("[a-z0-9-]{1,12}")
    }

    proptest! {
        #[test]
        fn every_stored_transaction_event_is_published_with_all_its_fields(
            reversal in any::<bool>(),
            seq in 1i64..i64::MAX,
            external in optional_text(),
            business in optional_text(),
            tx in any::<u128>(),
            entries in prop::collection::vec((any::<u128>(), any::<bool>(), 1i64..i64::MAX), 2..8),
        ) {
            let event_type = if reversal { "transaction.reversed" } else { "transaction.posted" };
            let cols = columns(event_type, "transaction", Uuid::from_u128(tx));
            let reverses = reversal.then(|| Uuid::from_u128(tx ^ 1));
            let side = |debit: bool| if debit { Side::Debit } else { Side::Credit };
            let mut stored = json!({
                "type": "TRANSFER", "commit_seq": seq, "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
                "reverses_ledger_tx_id": reverses, "external_ref": external, "business_ref": business,
                "entries": entries.iter().map(|(account, debit, amount)| stored_entry(Uuid::from_u128(*account), side(*debit), *amount, idr())).collect::<Vec<_>>(),
            });
            drop_null_keys(event_type, &mut stored);
            // what the relay reads back is text: the round trip goes through it
            let read_back: Value = serde_json::from_str(&stored.to_string()).unwrap();
            prop_assert_eq!(published_payload(cols, read_back), json!({
                "event_id": cols.event_id, "event_type": event_type, "tenant_id": cols.tenant_id,
                "ledger_tx_id": Uuid::from_u128(tx), "type": "TRANSFER", "commit_seq": seq,
                "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
                "reverses_ledger_tx_id": reverses, "external_ref": external, "business_ref": business,
                "entries": entries.iter().map(|(account, debit, amount)| json!({
                    "account_id": Uuid::from_u128(*account), "side": side(*debit), "amount_minor": amount, "currency": "IDR",
                })).collect::<Vec<_>>(),
            }));
        }
    }
}
