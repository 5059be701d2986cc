//! Request fingerprints. A fingerprint is the SHA-256 of the canonical JSON of a
//! normalized command: accounts named by id (never by code, so naming an account either
//! way fingerprints the same), fields in a fixed order, object keys sorted. Two requests
//! with the same fingerprint ask for exactly the same thing.

use crate::account::AttributesDigest;
use crate::currency::Currency;
use crate::money::AccountType;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex SHA-256 over `operation` and the canonical JSON of `normalized`.
pub fn fingerprint<T: Serialize>(operation: &str, normalized: &T) -> String {
    let canonical = serde_json::to_vec(normalized).expect("commands serialize");
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0u8]);
    hasher.update(&canonical);
    hex(&hasher.finalize())
}

pub fn attributes_digest(
    account_type: AccountType,
    currency: Currency,
    allow_negative: bool,
    metadata: &Value,
) -> AttributesDigest {
    let mut hasher = Sha256::new();
    hasher.update(account_type.as_str().as_bytes());
    hasher.update(currency.as_str().as_bytes());
    hasher.update([allow_negative as u8]);
    hasher.update(serde_json::to_vec(metadata).expect("json serializes"));
    hasher.finalize()[..16].try_into().expect("16 bytes")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_of_objects_does_not_change_the_fingerprint() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(fingerprint("post", &a), fingerprint("post", &b));
        assert_ne!(fingerprint("post", &a), fingerprint("reverse", &a));
        assert_ne!(fingerprint("post", &a), fingerprint("post", &json!({"b": 2})));
        assert_eq!(fingerprint("post", &a).len(), 64);
    }
}
