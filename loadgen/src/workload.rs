//! What to send: pure and seeded, so that a run is reproducible from its seed.

use ledger_core::ring::{HashRing, ShardId};
use uuid::Uuid;

/// SplitMix64: small, fast, and good enough to pick accounts.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        ledger_core::ring::splitmix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Exponential with the given rate: Poisson inter-arrival times.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Uniform,
    /// `accounts` hot accounts are the debit side of `share` of the transfers.
    Hot {
        accounts: usize,
        share: f64,
    },
    /// Debit accounts by a Zipf law with exponent `s`.
    Zipf {
        s: f64,
    },
}

/// The accounts of a run, grouped by the shard the ring places them on.
#[derive(Debug, Clone)]
pub struct Population {
    pub codes: Vec<String>,
    pub shard_of: Vec<ShardId>,
    /// Indexes into `codes`, per shard.
    pub by_shard: Vec<Vec<usize>>,
    /// Zipf cumulative weights over all accounts (rank = index), if used.
    zipf_cdf: Vec<f64>,
}

impl Population {
    pub fn new(ring: &HashRing, tenant: Uuid, count: usize, shape: Shape) -> Population {
        let codes: Vec<String> = (0..count).map(|i| format!("load:{i}")).collect();
        let shard_of: Vec<ShardId> =
            codes.iter().map(|c| ring.shard_for_account(ledger_core::ids::account_id(tenant, c))).collect();
        let max_shard = ring.shards().iter().copied().max().unwrap_or(0) as usize;
        let mut by_shard = vec![Vec::new(); max_shard + 1];
        for (index, shard) in shard_of.iter().enumerate() {
            by_shard[*shard as usize].push(index);
        }
        let zipf_cdf = match shape {
            Shape::Zipf { s } => {
                let mut total = 0.0;
                let mut cdf: Vec<f64> = (1..=count)
                    .map(|rank| {
                        total += 1.0 / (rank as f64).powf(s);
                        total
                    })
                    .collect();
                cdf.iter_mut().for_each(|w| *w /= total);
                cdf
            }
            _ => Vec::new(),
        };
        Population { codes, shard_of, by_shard, zipf_cdf }
    }

    fn partner_on(&self, rng: &mut Rng, shard: ShardId, not: usize) -> Option<usize> {
        let pool = &self.by_shard[shard as usize];
        if pool.len() < 2 {
            return None;
        }
        loop {
            let pick = pool[rng.below(pool.len())];
            if pick != not {
                return Some(pick);
            }
        }
    }

    fn partner_off(&self, rng: &mut Rng, shard: ShardId) -> Option<usize> {
        let others: Vec<usize> =
            (0..self.by_shard.len()).filter(|s| *s != shard as usize && !self.by_shard[*s].is_empty()).collect();
        let other = others.get(rng.below(others.len().max(1)))?;
        let pool = &self.by_shard[*other];
        Some(pool[rng.below(pool.len())])
    }

    /// A (debit, credit) pair of account indexes: on one shard, or on two with
    /// probability `cross_shard_share`.
    pub fn pick(&self, rng: &mut Rng, shape: Shape, cross_shard_share: f64) -> (usize, usize) {
        loop {
            let debit = match shape {
                Shape::Uniform => rng.below(self.codes.len()),
                Shape::Hot { accounts, share } if rng.unit() < share => rng.below(accounts.min(self.codes.len())),
                Shape::Hot { .. } => rng.below(self.codes.len()),
                Shape::Zipf { .. } => {
                    let u = rng.unit();
                    self.zipf_cdf.partition_point(|w| *w < u).min(self.codes.len() - 1)
                }
            };
            let shard = self.shard_of[debit];
            let credit = if cross_shard_share > 0.0 && rng.unit() < cross_shard_share {
                self.partner_off(rng, shard)
            } else {
                self.partner_on(rng, shard, debit)
            };
            if let Some(credit) = credit {
                return (debit, credit);
            }
        }
    }
}

/// An idempotency key for request `seq`; with `home_on` set, one whose home shard is that
/// shard, as a client that picks its keys well would (one database transaction per post).
pub fn key(ring: &HashRing, tenant: Uuid, run: &str, seq: u64, home_on: Option<ShardId>) -> String {
    let plain = format!("{run}-{seq}");
    let Some(shard) = home_on else { return plain };
    (0u32..)
        .map(|salt| format!("{plain}-{salt}"))
        .find(|k| ring.shard_for_key(tenant, k) == shard)
        .expect("some salt lands on every shard")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::ring::RingParams;

    fn ring() -> HashRing {
        HashRing::new(&[0, 1, 2, 3], RingParams { virtual_nodes_per_shard: 128 })
    }

    #[test]
    fn single_shard_pairs_stay_on_one_shard_and_differ() {
        let tenant = Uuid::from_u128(7);
        let population = Population::new(&ring(), tenant, 400, Shape::Uniform);
        let mut rng = Rng::new(1);
        for _ in 0..2000 {
            let (d, c) = population.pick(&mut rng, Shape::Uniform, 0.0);
            assert_ne!(d, c);
            assert_eq!(population.shard_of[d], population.shard_of[c]);
        }
    }

    #[test]
    fn hot_share_goes_to_hot_accounts_and_cross_share_crosses() {
        let tenant = Uuid::from_u128(7);
        let shape = Shape::Hot { accounts: 10, share: 0.9 };
        let population = Population::new(&ring(), tenant, 1000, shape);
        let mut rng = Rng::new(2);
        let hot = (0..10_000).filter(|_| population.pick(&mut rng, shape, 0.0).0 < 10).count();
        assert!((8_800..=9_300).contains(&hot), "{hot}");
        let crossed = (0..10_000)
            .filter(|_| {
                let (d, c) = population.pick(&mut rng, Shape::Uniform, 0.25);
                population.shard_of[d] != population.shard_of[c]
            })
            .count();
        assert!((2_200..=2_800).contains(&crossed), "{crossed}");
    }

    #[test]
    fn zipf_prefers_low_ranks_and_keys_can_be_homed() {
        let tenant = Uuid::from_u128(7);
        let shape = Shape::Zipf { s: 1.1 };
        let population = Population::new(&ring(), tenant, 1000, shape);
        let mut rng = Rng::new(3);
        let top = (0..10_000).filter(|_| population.pick(&mut rng, shape, 0.0).0 < 10).count();
        assert!(top > 3_000, "{top}");
        let key = key(&ring(), tenant, "r", 5, Some(2));
        assert_eq!(ring().shard_for_key(tenant, &key), 2);
    }
}
