//! How an event is kept in the outbox table: its published form less what the row's
//! own columns already say.
//!
//! Every byte a shard writes per transfer is a byte the disk must take in (see
//! docs/BENCHMARKS.md, section 2: unsynced table growth is what the kernel flushes in the
//! bursts that stall commits), and the outbox row was the largest part of a transfer's
//! footprint: its payload repeated the event id, type, tenant and transaction id, which
//! are columns of the same row, spelled out null references, and named every field of
//! every entry. The stored payload drops those; the relay puts them back before it
//! publishes, so consumers see exactly the event PROTOCOL-NOTES.md describes.
//!
//! Rules (each undone exactly by [`published_payload`]):
//! - `event_id`, `event_type` and `tenant_id` are dropped when they equal the row's
//!   `outbox_id`, `event_type` and `tenant_id`;
//! - the aggregate's id (`ledger_tx_id` of a transaction event, `account_id` of an
//!   account event) is dropped when it equals the row's `aggregate_id`;
//! - a key of the event type's [`nullable_keys`] is dropped when it is null;
//! - each entry `{"account_id", "side", "amount_minor", "currency"}` of a transaction event
//!   becomes the array `[account_id, side, amount_minor, currency]`.
//!
//! A stored payload that still holds `event_id` (rows written before this form, or an
//! event whose id is not the row's, which is stored whole) is published as it is.

use serde_json::{Map, Value};
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

fn holds_uuid(value: Option<&Value>, id: Uuid) -> bool {
    value.and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok()) == Some(id)
}

/// The payload to store for an event whose published form is `event`.
pub fn stored_payload(columns: EventColumns<'_>, event: &Value) -> Value {
    let Some(fields) = event.as_object() else { return event.clone() };
    // without its own id the compact form could not be told from a payload stored whole
    if !holds_uuid(fields.get("event_id"), columns.event_id) {
        return event.clone();
    }
    let mut stored = Map::with_capacity(fields.len());
    for (key, value) in fields {
        let implied = match key.as_str() {
            "event_id" => holds_uuid(Some(value), columns.event_id),
            "tenant_id" => holds_uuid(Some(value), columns.tenant_id),
            "event_type" => value.as_str() == Some(columns.event_type),
            _ if Some(key.as_str()) == aggregate_key(columns.aggregate_type) => holds_uuid(Some(value), columns.aggregate_id),
            _ => value.is_null() && nullable_keys(columns.event_type).contains(&key.as_str()),
        };
        if implied {
            continue;
        }
        if key == "entries" && is_transaction_event(columns.event_type) {
            stored.insert(key.clone(), compact_entries(value));
        } else {
            stored.insert(key.clone(), value.clone());
        }
    }
    Value::Object(stored)
}

/// The event to publish for a stored payload.
pub fn published_payload(columns: EventColumns<'_>, stored: Value) -> Value {
    let Value::Object(mut fields) = stored else { return stored };
    if fields.contains_key("event_id") {
        return Value::Object(fields);
    }
    fields.insert("event_id".into(), Value::String(columns.event_id.to_string()));
    fields.entry("event_type").or_insert_with(|| Value::String(columns.event_type.to_owned()));
    fields.entry("tenant_id").or_insert_with(|| Value::String(columns.tenant_id.to_string()));
    if let Some(key) = aggregate_key(columns.aggregate_type) {
        fields.entry(key).or_insert_with(|| Value::String(columns.aggregate_id.to_string()));
    }
    for key in nullable_keys(columns.event_type) {
        fields.entry(*key).or_insert(Value::Null);
    }
    if is_transaction_event(columns.event_type)
        && let Some(entries) = fields.get_mut("entries")
    {
        expand_entries(entries);
    }
    Value::Object(fields)
}

fn compact_entries(entries: &Value) -> Value {
    let Some(list) = entries.as_array() else { return entries.clone() };
    let compact: Option<Vec<Value>> = list
        .iter()
        .map(|entry| {
            let fields = entry.as_object().filter(|f| f.len() == ENTRY_FIELDS.len())?;
            ENTRY_FIELDS.iter().map(|name| fields.get(*name).cloned()).collect::<Option<Vec<_>>>().map(Value::Array)
        })
        .collect();
    // an entry of another shape keeps the whole list as it was
    compact.map(Value::Array).unwrap_or_else(|| entries.clone())
}

fn expand_entries(entries: &mut Value) {
    let Some(list) = entries.as_array_mut() else { return };
    for entry in list {
        if let Value::Array(values) = entry
            && values.len() == ENTRY_FIELDS.len()
        {
            let fields: Map<String, Value> = ENTRY_FIELDS.iter().map(|name| (*name).to_owned()).zip(values.drain(..)).collect();
            *entry = Value::Object(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn columns(event_type: &'static str, aggregate_type: &'static str, aggregate_id: Uuid) -> EventColumns<'static> {
        EventColumns {
            event_id: Uuid::from_u128(0xe1),
            tenant_id: Uuid::from_u128(0x7e),
            aggregate_type,
            aggregate_id,
            event_type,
        }
    }

    fn posted_event(external_ref: Value, reverses: Value) -> Value {
        json!({
            "event_id": Uuid::from_u128(0xe1), "event_type": "transaction.posted", "tenant_id": Uuid::from_u128(0x7e),
            "ledger_tx_id": Uuid::from_u128(0x1d), "type": "TRANSFER", "commit_seq": 7,
            "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
            "reverses_ledger_tx_id": reverses, "external_ref": external_ref, "business_ref": null,
            "entries": [
                {"account_id": Uuid::from_u128(0xa1), "side": "DEBIT", "amount_minor": 42, "currency": "IDR"},
                {"account_id": Uuid::from_u128(0xa2), "side": "CREDIT", "amount_minor": 42, "currency": "IDR"},
            ],
        })
    }

    #[test]
    fn a_transfer_is_stored_without_what_the_row_says_and_published_whole() {
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x1d));
        let event = posted_event(Value::Null, Value::Null);
        let stored = stored_payload(cols, &event);
        assert_eq!(
            stored,
            json!({
                "type": "TRANSFER", "commit_seq": 7,
                "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
                "entries": [
                    [Uuid::from_u128(0xa1), "DEBIT", 42, "IDR"],
                    [Uuid::from_u128(0xa2), "CREDIT", 42, "IDR"],
                ],
            })
        );
        assert!(stored.to_string().len() * 2 < event.to_string().len(), "{stored}");
        assert_eq!(published_payload(cols, stored), event);
    }

    #[test]
    fn references_that_are_set_are_kept() {
        let cols = columns("transaction.reversed", "transaction", Uuid::from_u128(0x1d));
        let mut event = posted_event(json!({"type": "PSP", "id": "x-1"}), json!(Uuid::from_u128(0x0d)));
        event["event_type"] = json!("transaction.reversed");
        let stored = stored_payload(cols, &event);
        assert_eq!(stored["external_ref"], json!({"type": "PSP", "id": "x-1"}));
        assert_eq!(stored["reverses_ledger_tx_id"], json!(Uuid::from_u128(0x0d)));
        assert_eq!(published_payload(cols, stored), event);
    }

    #[test]
    fn a_field_that_differs_from_its_column_is_kept() {
        // a saga leg's ledger_tx_id is the saga's id, which is also the aggregate; were it
        // ever another id, the payload must keep it rather than lose it to the column
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x99));
        let event = posted_event(Value::Null, Value::Null);
        let stored = stored_payload(cols, &event);
        assert_eq!(stored["ledger_tx_id"], json!(Uuid::from_u128(0x1d)));
        assert_eq!(published_payload(cols, stored), event);
    }

    #[test]
    fn account_events_drop_their_repeated_ids() {
        let account = Uuid::from_u128(0xa1);
        let cols = columns("account.status_changed", "account", account);
        let event = json!({
            "event_id": Uuid::from_u128(0xe1), "event_type": "account.status_changed", "tenant_id": Uuid::from_u128(0x7e),
            "account_id": account, "from": "ACTIVE", "to": "FROZEN", "actor": "ops", "reason_code": null,
            "changed_at": "2026-11-22T10:00:00Z",
        });
        let stored = stored_payload(cols, &event);
        assert_eq!(stored, json!({"from": "ACTIVE", "to": "FROZEN", "actor": "ops", "changed_at": "2026-11-22T10:00:00Z"}));
        assert_eq!(published_payload(cols, stored), event);
    }

    #[test]
    fn an_event_whose_id_is_not_the_rows_is_stored_whole() {
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x1d));
        let mut event = posted_event(Value::Null, Value::Null);
        event["event_id"] = json!(Uuid::from_u128(0xe2));
        assert_eq!(stored_payload(cols, &event), event);
        assert_eq!(published_payload(cols, stored_payload(cols, &event)), event);
    }

    #[test]
    fn a_payload_stored_whole_is_published_as_it_is() {
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x1d));
        let event = posted_event(Value::Null, Value::Null);
        assert_eq!(published_payload(cols, event.clone()), event);
    }

    #[test]
    fn entries_of_another_shape_are_kept_as_they_are() {
        let cols = columns("transaction.posted", "transaction", Uuid::from_u128(0x1d));
        let mut event = posted_event(Value::Null, Value::Null);
        event["entries"][1]["memo"] = json!("extra");
        let stored = stored_payload(cols, &event);
        assert_eq!(stored["entries"], event["entries"]);
        assert_eq!(published_payload(cols, stored), event);
    }

    fn optional_text() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Null), "[a-z0-9-]{1,12}".prop_map(Value::String)]
    }

    proptest! {
        #[test]
        fn storing_then_publishing_gives_back_every_transaction_event(
            reversal in any::<bool>(),
            seq in 1i64..i64::MAX,
            external in optional_text(),
            business in optional_text(),
            tx in any::<u128>(),
            entries in prop::collection::vec((any::<u128>(), any::<bool>(), 1i64..i64::MAX, "[A-Z]{3}"), 2..8),
        ) {
            let event_type = if reversal { "transaction.reversed" } else { "transaction.posted" };
            let cols = columns(event_type, "transaction", Uuid::from_u128(tx));
            let event = json!({
                "event_id": cols.event_id, "event_type": event_type, "tenant_id": cols.tenant_id,
                "ledger_tx_id": Uuid::from_u128(tx), "type": "TRANSFER", "commit_seq": seq,
                "occurred_at": "2026-11-22T10:00:00Z", "posted_at": "2026-11-22T10:00:01Z",
                "reverses_ledger_tx_id": if reversal { json!(Uuid::from_u128(tx ^ 1)) } else { Value::Null },
                "external_ref": external, "business_ref": business,
                "entries": entries.iter().map(|(account, debit, amount, currency)| json!({
                    "account_id": Uuid::from_u128(*account), "side": if *debit { "DEBIT" } else { "CREDIT" },
                    "amount_minor": amount, "currency": currency,
                })).collect::<Vec<_>>(),
            });
            let stored = stored_payload(cols, &event);
            prop_assert!(stored.get("event_id").is_none());
            // what the relay reads back is text: the round trip goes through it
            let read_back: Value = serde_json::from_str(&stored.to_string()).unwrap();
            prop_assert_eq!(published_payload(cols, read_back), event);
        }
    }
}
