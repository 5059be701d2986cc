//! Stateless checks: the limits and shapes of docs/PROTOCOL.md that need no account state.
//! Every limit is a named constant; every failure names the field.

use crate::command::{EntryCommand, ExternalRef, PostCommand};
use crate::currency::Currency;
use crate::money::Side;
use crate::rejection::Rejection;
use std::collections::{BTreeMap, HashSet};

pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
pub const ENTRIES_MIN: usize = 2;
pub const ENTRIES_MAX: usize = 128;
pub const ACCOUNT_CODE_CHARS_MAX: usize = 128;
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 128;
pub const ACTOR_CHARS_MAX: usize = 100;
pub const TX_TYPE_CHARS_MAX: usize = 64;
pub const REASON_CODE_CHARS_MAX: usize = 64;
pub const BUSINESS_REF_CHARS_MAX: usize = 128;
pub const EXTERNAL_REF_TYPE_CHARS_MAX: usize = 64;
pub const EXTERNAL_REF_CHARS_MAX: usize = 256;
pub const METADATA_BYTES_MAX: usize = 8 * 1024;
/// How deep a metadata object may nest (the object itself is level 1).
pub const METADATA_DEPTH_MAX: usize = 32;
pub const STATEMENT_LIMIT_MAX: u32 = 1000;

/// Transaction types the ledger itself writes; clients may not post them directly.
pub const RESERVED_TX_TYPES: &[&str] = &["REVERSAL", "SAGA_COMPENSATION"];

pub fn account_code(field: &str, code: &str) -> Result<(), Rejection> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ":._@/-".contains(c);
    if code.is_empty() || code.chars().count() > ACCOUNT_CODE_CHARS_MAX {
        return Err(Rejection::invalid(field, format!("must be 1-{ACCOUNT_CODE_CHARS_MAX} characters")));
    }
    if !code.chars().all(allowed) {
        return Err(Rejection::invalid(field, "may contain only A-Z a-z 0-9 : . _ @ / -"));
    }
    Ok(())
}

pub fn idempotency_key(field: &str, key: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_CHARS_MAX {
        return Err(Rejection::invalid(field, format!("must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} characters")));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Rejection::invalid(field, "must be printable ASCII"));
    }
    Ok(())
}

pub fn tx_type(field: &str, tx_type: &str) -> Result<(), Rejection> {
    if tx_type.is_empty() || tx_type.len() > TX_TYPE_CHARS_MAX {
        return Err(Rejection::invalid(field, format!("must be 1-{TX_TYPE_CHARS_MAX} characters")));
    }
    if !tx_type.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
        return Err(Rejection::invalid(field, "may contain only A-Z 0-9 _"));
    }
    if RESERVED_TX_TYPES.contains(&tx_type) {
        return Err(Rejection::invalid(field, format!("{tx_type} is written by the ledger itself")));
    }
    Ok(())
}

/// A free-text field with a length range, counted in characters, no control characters.
pub fn text(field: &str, value: &str, chars_max: usize) -> Result<(), Rejection> {
    let count = value.chars().count();
    if count == 0 || count > chars_max {
        return Err(Rejection::invalid(field, format!("must be 1-{chars_max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

pub fn metadata(field: &str, value: &serde_json::Value) -> Result<(), Rejection> {
    if !value.is_object() {
        return Err(Rejection::invalid(field, "must be a JSON object"));
    }
    if serialized_len(value) > METADATA_BYTES_MAX {
        return Err(Rejection::invalid(field, format!("must serialize to at most {METADATA_BYTES_MAX} bytes")));
    }
    metadata_shape(field, value, 1)
}

/// Walks a metadata value: no deeper than [`METADATA_DEPTH_MAX`] (the messages between
/// the ledger's processes wrap it in a few more levels, under the JSON decoder's limit of
/// 128), and no U+0000 in a key or a string (PostgreSQL cannot store it in `jsonb`: one
/// such value would fail the whole batch it is written with). The field named is the
/// path to the offending value.
fn metadata_shape(path: &str, value: &serde_json::Value, depth: usize) -> Result<(), Rejection> {
    use serde_json::Value;
    let nested = || Rejection::invalid(path, format!("must not nest deeper than {METADATA_DEPTH_MAX} levels"));
    match value {
        Value::String(text) if text.contains('\0') => Err(nul(path)),
        Value::Array(items) => {
            if depth > METADATA_DEPTH_MAX {
                return Err(nested());
            }
            items.iter().enumerate().try_for_each(|(i, item)| metadata_shape(&format!("{path}[{i}]"), item, depth + 1))
        }
        Value::Object(members) => {
            if depth > METADATA_DEPTH_MAX {
                return Err(nested());
            }
            members.iter().try_for_each(|(key, member)| {
                let member_path = format!("{path}.{key}");
                if key.contains('\0') {
                    return Err(nul(&member_path));
                }
                metadata_shape(&member_path, member, depth + 1)
            })
        }
        _ => Ok(()),
    }
}

fn nul(path: &str) -> Rejection {
    Rejection::invalid(path, "must not contain the character U+0000")
}

/// The length of `value`'s JSON, counted without building it.
fn serialized_len(value: &serde_json::Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

pub fn optional_text(field: &str, value: Option<&String>, chars_max: usize) -> Result<(), Rejection> {
    value.map_or(Ok(()), |text| self::text(field, text, chars_max))
}

pub fn external_ref(field: &str, external_ref: &ExternalRef) -> Result<(), Rejection> {
    text(&format!("{field}.type"), &external_ref.ref_type, EXTERNAL_REF_TYPE_CHARS_MAX)?;
    text(&format!("{field}.ref"), &external_ref.reference, EXTERNAL_REF_CHARS_MAX)
}

/// Every stateless rule of a post, as one function: the router runs it before it routes a
/// request, and the shard writer runs it again on every post it is handed, whoever sent
/// it (`crate::recheck`). Field rules first, then the entries ([`entries`]).
pub fn post(command: &PostCommand) -> Result<(), Rejection> {
    idempotency_key("idempotency_key", &command.idempotency_key)?;
    tx_type("type", &command.tx_type)?;
    if let Some(reference) = &command.external_ref {
        external_ref("external_ref", reference)?;
    }
    optional_text("business_ref", command.business_ref.as_ref(), BUSINESS_REF_CHARS_MAX)?;
    text("actor", &command.actor, ACTOR_CHARS_MAX)?;
    optional_text("reason_code", command.reason_code.as_ref(), REASON_CODE_CHARS_MAX)?;
    metadata("metadata", &command.metadata)?;
    entries(&command.entries)
}

/// Per currency, debits equal credits: the rule every posted transaction obeys, whatever
/// wrote it (a post, a reversal, a saga leg with its clearing entries, a compensation).
/// Amounts are summed in 128 bits, so no sum overflows.
pub fn balanced(entries: &[EntryCommand]) -> Result<(), Rejection> {
    // a transaction has few currencies: a small vector beats a map
    let mut sums: Vec<(Currency, i128, i128)> = Vec::with_capacity(2);
    for entry in entries {
        let index = match sums.iter().position(|(currency, _, _)| *currency == entry.currency) {
            Some(index) => index,
            None => {
                sums.push((entry.currency, 0, 0));
                sums.len() - 1
            }
        };
        match entry.side {
            Side::Debit => sums[index].1 += entry.amount_minor as i128,
            Side::Credit => sums[index].2 += entry.amount_minor as i128,
        }
    }
    sums.sort_by_key(|(currency, _, _)| *currency);
    match sums.into_iter().find(|(_, debits, credits)| debits != credits) {
        Some((currency, debits_minor, credits_minor)) => {
            Err(Rejection::Unbalanced { currency: currency.to_string(), debits_minor, credits_minor })
        }
        None => Ok(()),
    }
}

pub fn amount(field: &str, amount_minor: i64) -> Result<(), Rejection> {
    if amount_minor < 1 {
        return Err(Rejection::invalid(field, "must be an integer from 1 to 2^63-1"));
    }
    Ok(())
}

/// The checks of a post's entries, in precedence order: count, per-currency sums that fit
/// 64 bits, balance per currency, then each account at most once.
pub fn entries(entries: &[EntryCommand]) -> Result<(), Rejection> {
    if entries.len() < ENTRIES_MIN || entries.len() > ENTRIES_MAX {
        return Err(Rejection::invalid("entries", format!("must hold {ENTRIES_MIN}-{ENTRIES_MAX} entries")));
    }
    for (index, entry) in entries.iter().enumerate() {
        amount(&format!("entries[{index}].amount_minor"), entry.amount_minor)?;
    }
    let mut sums: BTreeMap<Currency, (i128, i128)> = BTreeMap::new();
    for entry in entries {
        let sum = sums.entry(entry.currency).or_default();
        match entry.side {
            Side::Debit => sum.0 += entry.amount_minor as i128,
            Side::Credit => sum.1 += entry.amount_minor as i128,
        }
    }
    for (currency, (debits, credits)) in &sums {
        if *debits > i64::MAX as i128 || *credits > i64::MAX as i128 {
            return Err(Rejection::invalid("entries", format!("{currency} amounts sum past 2^63-1")));
        }
    }
    balanced(entries)?;
    let mut seen = HashSet::with_capacity(entries.len());
    for entry in entries {
        if !seen.insert(entry.account_id) {
            return Err(Rejection::DuplicateAccount { account_id: entry.account_id });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn entry(account: u128, side: Side, amount_minor: i64, currency: &str) -> EntryCommand {
        EntryCommand { account_id: Uuid::from_u128(account), side, amount_minor, currency: Currency::parse(currency).unwrap() }
    }

    #[test]
    fn entries_checks_in_precedence_order() {
        use Side::*;
        let table: Vec<(Vec<EntryCommand>, Option<&str>)> = vec![
            (vec![entry(1, Debit, 5, "IDR"), entry(2, Credit, 5, "IDR")], None),
            (vec![entry(1, Debit, 5, "IDR")], Some("INVALID_REQUEST")),
            (vec![entry(1, Debit, 0, "IDR"), entry(2, Credit, 0, "IDR")], Some("INVALID_REQUEST")),
            (vec![entry(1, Debit, -5, "IDR"), entry(2, Credit, -5, "IDR")], Some("INVALID_REQUEST")),
            (
                vec![entry(1, Debit, i64::MAX, "IDR"), entry(2, Debit, 1, "IDR"), entry(3, Credit, i64::MAX, "IDR")],
                Some("INVALID_REQUEST"),
            ),
            (vec![entry(1, Debit, 5, "IDR"), entry(2, Credit, 4, "IDR")], Some("UNBALANCED")),
            (vec![entry(1, Debit, 5, "IDR"), entry(2, Credit, 5, "USD")], Some("UNBALANCED")),
            (vec![entry(1, Debit, 5, "IDR"), entry(1, Credit, 5, "IDR")], Some("DUPLICATE_ACCOUNT")),
            (
                vec![
                    entry(1, Debit, 5, "IDR"),
                    entry(2, Credit, 5, "IDR"),
                    entry(3, Debit, 7, "USD"),
                    entry(4, Credit, 7, "USD"),
                ],
                None,
            ),
        ];
        for (input, expected) in table {
            let got = super::entries(&input).err().map(|r| r.code());
            assert_eq!(got, expected, "{input:?}");
        }
        let too_many: Vec<_> =
            (0..129).map(|i| entry(i, if i % 2 == 0 { Side::Debit } else { Side::Credit }, 1, "IDR")).collect();
        assert_eq!(super::entries(&too_many).unwrap_err().code(), "INVALID_REQUEST");
    }

    #[test]
    fn field_rules() {
        assert!(account_code("code", "wallet:user-42").is_ok());
        assert!(account_code("code", "a b").is_err());
        assert!(account_code("code", "").is_err());
        assert!(account_code("code", &"a".repeat(129)).is_err());
        assert!(idempotency_key("k", "pay-1 capture").is_ok());
        assert!(idempotency_key("k", "pay\n").is_err());
        assert!(idempotency_key("k", "päy").is_err());
        assert!(tx_type("type", "PAYMENT_CAPTURED").is_ok());
        assert!(tx_type("type", "payment").is_err());
        assert!(tx_type("type", "REVERSAL").is_err());
        assert!(metadata("m", &serde_json::json!({"a": "x".repeat(9000)})).is_err());
        assert!(metadata("m", &serde_json::json!([1])).is_err());
    }

    #[test]
    fn metadata_refuses_what_postgresql_cannot_store_or_the_internal_messages_cannot_carry() {
        use serde_json::json;
        let field_of = |value: serde_json::Value| metadata("metadata", &value).err().map(|r| r.details()["field"].clone());
        assert_eq!(field_of(json!({"note": "fine", "list": [1, "two", {"deep": true}]})), None);
        assert_eq!(field_of(json!({"note": "a\u{0}b"})), Some(json!("metadata.note")));
        assert_eq!(field_of(json!({"list": ["ok", "x\u{0}"]})), Some(json!("metadata.list[1]")));
        assert_eq!(field_of(json!({"k\u{0}": 1})), Some(json!("metadata.k\u{0}")));
        let nest = |levels: usize| (1..levels).fold(json!({}), |inner, _| json!({"n": inner}));
        assert_eq!(field_of(nest(METADATA_DEPTH_MAX)), None);
        assert!(field_of(nest(METADATA_DEPTH_MAX + 1)).is_some());
        assert_eq!(metadata("metadata", &nest(127)).unwrap_err().code(), "INVALID_REQUEST");
    }
}
