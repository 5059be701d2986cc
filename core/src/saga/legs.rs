//! Legs: a cross-shard transaction split by shard, each leg balanced on its shard by
//! entries on that shard's clearing account, and which legs post held.

use super::*;

/// Clearing accounts have codes that no client can create (clients may not use `#`).
pub const CLEARING_CODE_PREFIX: &str = "#clearing";

/// The clearing account of `tenant_id` on `shard_id` for `currency`.
pub fn clearing_account_id(tenant_id: Uuid, shard_id: u16, currency: Currency) -> Uuid {
    let name = format!("ledger:clearing:{}:{shard_id}:{currency}", tenant_id.hyphenated());
    Uuid::new_v5(&crate::ids::ACCOUNT_NAMESPACE, name.as_bytes())
}

pub fn clearing_account_code(shard_id: u16, currency: Currency) -> String {
    format!("{CLEARING_CODE_PREFIX}:{shard_id}:{currency}")
}

/// The clearing account is an asset of the shard: "due from the other shards".
pub const CLEARING_ACCOUNT_TYPE: AccountType = AccountType::Asset;

/// Whether step `step` of a saga whose steps do `actions` posts its leg held: every leg
/// but the last is (see [`SagaRecord::holds`]).
pub fn holds_step<'a>(actions: impl IntoIterator<Item = &'a StepAction>, step: usize) -> bool {
    let mut is_leg = false;
    for (index, action) in actions.into_iter().enumerate() {
        if !action.posts_leg() {
            continue;
        }
        if index == step {
            is_leg = true;
        } else if index > step && is_leg {
            return true;
        }
    }
    false
}

/// Splits a transaction's entries into one leg per shard, in the order the saga posts
/// them: legs that can be refused for funds or status (those that take money out of an
/// account) first, legs that only bring money in after, so that a refusal usually comes
/// before anything posted. Ties keep the order of first appearance in the request.
/// `is_outgoing(entry)` says whether the entry lowers its account's balance.
pub fn plan_legs(
    entries: &[EntryCommand],
    shard_of: impl Fn(Uuid) -> u16,
    is_outgoing: impl Fn(&EntryCommand) -> bool,
) -> Vec<(u16, Vec<LegEntry>)> {
    let mut legs: Vec<(u16, Vec<LegEntry>)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let shard = shard_of(entry.account_id);
        let leg_entry = LegEntry { seq: index as i32 + 1, entry: entry.clone() };
        match legs.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, leg)) => leg.push(leg_entry),
            None => legs.push((shard, vec![leg_entry])),
        }
    }
    // stable: ties keep their order of first appearance
    legs.sort_by_key(|(_, leg)| !leg.iter().any(|e| is_outgoing(&e.entry)));
    legs
}

/// The entries on `shard_id`'s clearing accounts that balance a leg, per currency,
/// numbered after the client's `entry_count` entries.
pub fn clearing_entries(tenant_id: Uuid, shard_id: u16, leg: &[LegEntry], entry_count: usize) -> Vec<LegEntry> {
    let mut net: BTreeMap<Currency, i128> = BTreeMap::new();
    for e in leg {
        let amount = e.entry.amount_minor as i128;
        *net.entry(e.entry.currency).or_default() += match e.entry.side {
            Side::Debit => amount,
            Side::Credit => -amount,
        };
    }
    let mut clearing = Vec::new();
    for (currency, debits_minus_credits) in net {
        if debits_minus_credits == 0 {
            continue;
        }
        let side = if debits_minus_credits > 0 { Side::Credit } else { Side::Debit };
        clearing.push(LegEntry {
            seq: (entry_count + clearing.len() + 1) as i32,
            entry: EntryCommand {
                account_id: clearing_account_id(tenant_id, shard_id, currency),
                side,
                // a leg's client entries are a subset of a validated transaction's, so the
                // net per currency is bounded by the transaction's total, which fits in i64
                amount_minor: i64::try_from(debits_minus_credits.unsigned_abs()).expect("bounded by the validated total"),
                currency,
            },
        });
    }
    clearing
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(account: u128, side: Side, amount: i64, currency: &str) -> EntryCommand {
        EntryCommand {
            account_id: Uuid::from_u128(account),
            side,
            amount_minor: amount,
            currency: Currency::parse(currency).unwrap(),
        }
    }

    #[test]
    fn legs_that_take_money_out_go_first_in_request_order() {
        let entries = vec![
            entry(1, Side::Credit, 100, "IDR"), // shard 1, incoming
            entry(2, Side::Debit, 60, "IDR"),   // shard 2, outgoing
            entry(3, Side::Debit, 40, "IDR"),   // shard 3, outgoing
        ];
        let legs = plan_legs(&entries, |id| id.as_u128() as u16, |e| e.side == Side::Debit);
        assert_eq!(legs.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 3, 1]);
        assert_eq!(legs[2].1[0].seq, 1);
    }

    fn balanced_entries() -> impl Strategy<Value = Vec<EntryCommand>> {
        // pairs of opposite entries of random accounts and currencies: balanced per currency
        prop::collection::vec((0u128..12, 0u128..12, 1i64..1_000_000, 0usize..2), 1..20).prop_map(|pairs| {
            let currencies = ["IDR", "USD"];
            let mut entries = Vec::new();
            for (from, to, amount, currency) in pairs {
                entries.push(entry(from, Side::Debit, amount, currencies[currency]));
                entries.push(entry(to, Side::Credit, amount, currencies[currency]));
            }
            entries
        })
    }

    proptest! {
        #[test]
        fn every_leg_balances_and_clearing_nets_to_zero(entries in balanced_entries(), shards in 2u16..6) {
            let tenant = Uuid::from_u128(77);
            let legs = plan_legs(&entries, |id| (id.as_u128() % shards as u128) as u16, |e| e.side == Side::Debit);
            let mut clearing_net: BTreeMap<Currency, i128> = BTreeMap::new();
            let mut seqs = Vec::new();
            for (shard, leg) in &legs {
                let clearing = clearing_entries(tenant, *shard, leg, entries.len());
                let mut net: BTreeMap<Currency, i128> = BTreeMap::new();
                for e in leg.iter().chain(&clearing) {
                    let signed = if e.entry.side == Side::Debit { e.entry.amount_minor as i128 } else { -(e.entry.amount_minor as i128) };
                    *net.entry(e.entry.currency).or_default() += signed;
                }
                prop_assert!(net.values().all(|v| *v == 0), "leg on shard {} is balanced", shard);
                for e in &clearing {
                    prop_assert_eq!(e.entry.account_id, clearing_account_id(tenant, *shard, e.entry.currency));
                    let signed = if e.entry.side == Side::Debit { e.entry.amount_minor as i128 } else { -(e.entry.amount_minor as i128) };
                    *clearing_net.entry(e.entry.currency).or_default() += signed;
                }
                let mut leg_seqs: Vec<i32> = leg.iter().chain(&clearing).map(|e| e.seq).collect();
                leg_seqs.sort();
                leg_seqs.dedup();
                prop_assert_eq!(leg_seqs.len(), leg.len() + clearing.len(), "entry_seq unique within a leg");
                seqs.extend(leg.iter().map(|e| e.seq));
            }
            prop_assert!(clearing_net.values().all(|v| *v == 0), "clearing accounts net to zero over all legs");
            seqs.sort();
            prop_assert_eq!(seqs, (1..=entries.len() as i32).collect::<Vec<_>>(), "client entries keep their numbers");
        }
    }
}
