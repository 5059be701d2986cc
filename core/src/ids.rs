//! Identifiers. Account ids are derived from (tenant, code) so that any client can compute
//! them offline and routing needs no lookup. Ledger ids (transactions, entries, events)
//! are time-ordered UUIDv7, which keeps index inserts at the right-hand edge of the
//! b-tree; a transaction id also carries the shard that holds it in its 12 `rand_a` bits,
//! so a lookup by `ledger_tx_id` goes straight to one shard.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// `NAMESPACE_URL` of RFC 4122, as docs/PROTOCOL.md ("Accounts") fixes it.
pub const ACCOUNT_NAMESPACE: Uuid = Uuid::NAMESPACE_URL;

/// The largest shard id a ledger id can carry.
pub const SHARD_ID_MAX: u16 = 0x0fff;

pub fn account_id(tenant_id: Uuid, code: &str) -> Uuid {
    let name = format!("ledger:account:{}:{}", tenant_id.hyphenated(), code);
    Uuid::new_v5(&ACCOUNT_NAMESPACE, name.as_bytes())
}

/// Where fresh ids come from. The shard writer uses [`RandomIds`]; tests use [`SequentialIds`]
/// so that a planned batch is fully reproducible.
pub trait IdSource {
    /// 16 random bits per call are enough for uniqueness within a millisecond and shard
    /// together with the 62 further random bits; implementations supply all 74.
    fn random_bits(&mut self) -> u128;

    fn ledger_id(&mut self, at: DateTime<Utc>, shard_id: u16) -> Uuid {
        debug_assert!(shard_id <= SHARD_ID_MAX);
        let millis = at.timestamp_millis().max(0) as u128 & ((1u128 << 48) - 1);
        let random = self.random_bits();
        let rand_b = random & ((1u128 << 62) - 1) & !SAGA_ID_FLAG;
        let value = (millis << 80) | (0x7u128 << 76) | ((shard_id as u128) << 64) | (0b10u128 << 62) | rand_b;
        Uuid::from_u128(value)
    }

    /// The id of a cross-shard transaction (a saga): a ledger id of the shard that holds
    /// its saga log, with [`SAGA_ID_FLAG`] set, so that a router can tell from the id
    /// alone that the transaction spans shards.
    fn saga_id(&mut self, at: DateTime<Utc>, home_shard: u16) -> Uuid {
        Uuid::from_u128(self.ledger_id(at, home_shard).as_u128() | SAGA_ID_FLAG)
    }
}

/// The highest random bit of a ledger id marks the id of a saga (see [`IdSource::saga_id`]).
pub const SAGA_ID_FLAG: u128 = 1 << 61;

/// Whether the id was minted by [`IdSource::saga_id`]. Ids minted before the flag existed
/// may carry it by chance, so a reader that finds no saga for such an id falls back to
/// the journal.
pub fn is_saga_id(id: Uuid) -> bool {
    id.get_version_num() == 7 && id.as_u128() & SAGA_ID_FLAG != 0
}

/// The shard a ledger id was minted on.
pub fn shard_of_ledger_id(id: Uuid) -> Option<u16> {
    if id.get_version_num() != 7 {
        return None;
    }
    Some(((id.as_u128() >> 64) & 0x0fff) as u16)
}

/// Ids from a SplitMix64 stream seeded from the operating system's random source: the
/// random bits need to be unique, not secret, and a system call per id is costly.
pub struct RandomIds {
    state: u64,
}

impl Default for RandomIds {
    fn default() -> RandomIds {
        RandomIds { state: Uuid::new_v4().as_u64_pair().0 }
    }
}

impl IdSource for RandomIds {
    fn random_bits(&mut self) -> u128 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let high = crate::ring::splitmix64(self.state);
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let low = crate::ring::splitmix64(self.state);
        ((high as u128) << 64) | low as u128
    }
}

/// Ids from a counter: deterministic, for tests.
#[derive(Default)]
pub struct SequentialIds(pub u128);

impl IdSource for SequentialIds {
    fn random_bits(&mut self) -> u128 {
        self.0 += 1;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_matches_protocol_derivation() {
        let tenant = Uuid::parse_str("0b6f4a4e-8a3b-4c2e-9d10-5f8f0e2a7c11").unwrap();
        let expected = Uuid::new_v5(
            &Uuid::parse_str("6ba7b811-9dad-11d1-80b4-00c04fd430c8").unwrap(),
            b"ledger:account:0b6f4a4e-8a3b-4c2e-9d10-5f8f0e2a7c11:wallet:user-42",
        );
        assert_eq!(account_id(tenant, "wallet:user-42"), expected);
        assert_eq!(expected.get_version_num(), 5);
    }

    #[test]
    fn ledger_ids_are_v7_carry_their_shard_and_sort_by_time() {
        let mut ids = SequentialIds::default();
        let early = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let late = DateTime::from_timestamp_millis(1_700_000_000_001).unwrap();
        let a = ids.ledger_id(early, 4095);
        let b = ids.ledger_id(late, 3);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(shard_of_ledger_id(a), Some(4095));
        assert_eq!(shard_of_ledger_id(b), Some(3));
        assert!(a < b);
        assert_eq!(shard_of_ledger_id(Uuid::new_v4()), None);
        assert!(!is_saga_id(a) && !is_saga_id(b));
        let saga = ids.saga_id(late, 9);
        assert!(is_saga_id(saga));
        assert_eq!(shard_of_ledger_id(saga), Some(9));
        assert_eq!(saga.get_variant(), uuid::Variant::RFC4122);
    }
}
