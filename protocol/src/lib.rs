//! # ledger-protocol
//!
//! The wire contract of docs/PROTOCOL.md as Rust types, and the internal messages between
//! routers and shard nodes.
//!
//! ## Layout
//! - [`subject`]: public subjects (`ledger.v1.<tenant>.<resource>.<op>`) and internal ones.
//! - [`request`]: request bodies, parsed strictly (unknown fields refused, the failing
//!   field named), and their conversion into validated core commands.
//! - [`reply`]: reply bodies (account object, transaction replies, statements).
//! - [`internal`]: router ↔ shard node messages; [`shard_reply`]: a shard's typed answer.
//! - [`admin`]: the operator operations' replies.
//! - [`headers`]: the optional timing headers (docs/PROTOCOL.md, "Server timing").

pub mod admin;
pub mod headers;
pub mod internal;
pub mod reply;
pub mod request;
pub mod shard_reply;
pub mod subject;

/// Times on the wire: RFC 3339, UTC, always six fractional digits, so that a replayed
/// reply is byte-identical to the first.
pub fn format_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Times on the wire as [`format_time`] writes them; read back as any RFC 3339 time.
pub mod time_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_time(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(deserializer)
    }

    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => serializer.serialize_str(&super::super::format_time(*at)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<DateTime<Utc>>::deserialize(deserializer)
        }
    }
}
