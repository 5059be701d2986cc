//! `ledger.v1.admin.audit`: every shard's own proof (projection drift, unbalanced
//! transactions, clearing balances, sagas in flight, held saga legs and their unsettled
//! amounts) and the checks that only the whole cluster can make (debits = credits per
//! currency; clearing accounts summing to zero per tenant and currency, and no saga leg
//! still held, once no saga is in flight).

use ledger_protocol::admin::{AuditReport, ClearingImbalance, ClusterChecks, CurrencyBalance, UnreachableShard};
use ledger_protocol::internal::ShardAudit;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The audit report from the shards' parts; `unreachable` shards make it not ok.
pub fn summarize(shards: &[ShardAudit], unreachable: Vec<UnreachableShard>) -> AuditReport {
    let mut totals: BTreeMap<&str, (i128, i128)> = BTreeMap::new();
    let mut clearing: BTreeMap<(Uuid, &str), i128> = BTreeMap::new();
    for shard in shards {
        for t in &shard.totals {
            let sum = totals.entry(t.currency.as_str()).or_default();
            sum.0 += t.debits_minor;
            sum.1 += t.credits_minor;
        }
        for c in &shard.clearing {
            *clearing.entry((c.tenant_id, c.currency.as_str())).or_default() += c.balance_minor as i128;
        }
    }
    let sagas_in_flight: usize = shards.iter().map(|s| s.sagas_in_flight.len()).sum();
    let held_legs: usize = shards.iter().map(|s| s.held_legs.len()).sum();
    let currencies: Vec<CurrencyBalance> = totals
        .iter()
        .map(|(currency, (debits, credits))| CurrencyBalance {
            currency: currency.to_string(),
            debits_minor: debits.to_string(),
            credits_minor: credits.to_string(),
            balanced: debits == credits,
        })
        .collect();
    let clearing_nonzero: Vec<ClearingImbalance> = clearing
        .iter()
        .filter(|(_, sum)| **sum != 0)
        .map(|((tenant, currency), sum)| ClearingImbalance {
            tenant_id: *tenant,
            currency: currency.to_string(),
            sum_minor: sum.to_string(),
        })
        .collect();
    // while a saga is in flight its clearing entries may be half posted
    let clearing_settled = clearing_nonzero.is_empty() || sagas_in_flight > 0;
    // a held leg settles before its saga's log says it ended
    let holds_settled = held_legs == 0 || sagas_in_flight > 0;
    let ok = unreachable.is_empty()
        && shards
            .iter()
            .all(|s| s.projection_drift.is_empty() && s.unbalanced_transactions.is_empty() && s.unsettled_drift.is_empty())
        && totals.values().all(|(d, c)| d == c)
        && clearing_settled
        && holds_settled;
    AuditReport {
        ok,
        shards: shards.to_vec(),
        unreachable_shards: unreachable,
        cluster: ClusterChecks { currencies, sagas_in_flight, clearing_nonzero, clearing_settled, held_legs, holds_settled },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_protocol::internal::{ClearingTotal, CurrencyTotals, HeldLeg, SagaInFlight};

    fn shard(id: u16, debits: i128, credits: i128, clearing: i64) -> ShardAudit {
        ShardAudit {
            shard_id: id,
            totals: vec![CurrencyTotals { currency: "IDR".into(), debits_minor: debits, credits_minor: credits }],
            clearing: vec![ClearingTotal { tenant_id: Uuid::nil(), currency: "IDR".into(), balance_minor: clearing }],
            ..ShardAudit::default()
        }
    }

    #[test]
    fn a_settled_cluster_is_ok() {
        let report = summarize(&[shard(0, 100, 100, -40), shard(1, 50, 50, 40)], vec![]);
        assert!(report.ok);
    }

    #[test]
    fn cluster_wide_imbalance_or_unsettled_clearing_is_not_ok() {
        assert!(!summarize(&[shard(0, 100, 90, 0)], vec![]).ok);
        let unsettled = summarize(&[shard(0, 100, 100, -40), shard(1, 50, 50, 0)], vec![]);
        assert!(!unsettled.ok);
        assert_eq!(unsettled.cluster.clearing_nonzero[0].sum_minor, "-40");
        // the same clearing balance is expected while a saga is half way
        let mut busy = shard(1, 50, 50, 0);
        busy.sagas_in_flight.push(SagaInFlight {
            saga_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            state: "RUNNING".into(),
            updated_at: chrono::Utc::now(),
        });
        assert!(summarize(&[shard(0, 100, 100, -40), busy], vec![]).ok);
        let unreachable = vec![UnreachableShard { shard_id: 1, error: serde_json::Value::Null }];
        assert!(!summarize(&[shard(0, 1, 1, 0)], unreachable).ok);
        let mut drifting = shard(0, 1, 1, 0);
        drifting.projection_drift.push(Uuid::nil());
        assert!(!summarize(&[drifting], vec![]).ok);
        let mut unsettled_drift = shard(0, 1, 1, 0);
        unsettled_drift.unsettled_drift.push(Uuid::nil());
        assert!(!summarize(&[unsettled_drift], vec![]).ok);
    }

    #[test]
    fn a_held_leg_is_expected_only_while_a_saga_is_in_flight() {
        let mut held = shard(0, 1, 1, 0);
        held.held_legs.push(HeldLeg { saga_id: Uuid::nil(), tenant_id: Uuid::nil(), step: 0, created_at: chrono::Utc::now() });
        let report = summarize(std::slice::from_ref(&held), vec![]);
        assert_eq!((report.ok, report.cluster.held_legs), (false, 1));
        held.sagas_in_flight.push(SagaInFlight {
            saga_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            state: "RUNNING".into(),
            updated_at: chrono::Utc::now(),
        });
        assert!(summarize(&[held], vec![]).ok);
    }
}
