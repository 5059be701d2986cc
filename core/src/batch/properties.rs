//! Random histories through the planner: every invariant holds after any sequence.

use crate::batch::testkit::*;
use crate::batch::*;
use proptest::prelude::*;

#[test]
fn planning_is_deterministic() {
    let commands = [transfer("a", "credit", "alice", 5), transfer("b", "alice", "bob", 3), transfer("c", "alice", "bob", 3)];
    let mut first = setup();
    let mut second = setup();
    assert_eq!(first.run(&commands), second.run(&commands));
    assert_eq!(first.entries, second.entries);
}

#[derive(Debug, Clone)]
enum Step {
    Transfer { from: usize, to: usize, amount: i64 },
    Split { from: usize, to: [usize; 2], amounts: [i64; 2] },
    Reverse { pick: usize },
    Freeze { account: usize, frozen: bool },
    Retry { pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..6usize, 0..6usize, 1..500i64).prop_map(|(from, to, amount)| Step::Transfer { from, to, amount }),
        2 => (0..6usize, 0..6usize, 0..6usize, 1..300i64, 1..300i64)
            .prop_map(|(from, a, b, x, y)| Step::Split { from, to: [a, b], amounts: [x, y] }),
        2 => (0..1000usize).prop_map(|pick| Step::Reverse { pick }),
        1 => (0..6usize, any::<bool>()).prop_map(|(account, frozen)| Step::Freeze { account, frozen }),
        1 => (0..1000usize).prop_map(|pick| Step::Retry { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(steps in proptest::collection::vec(step(), 1..120), batch in 1..12usize) {
        let mut shard = Shard::new();
        shard.run(&ACCOUNTS.iter().map(|(c, t, n)| create(c, *t, "IDR", *n)).collect::<Vec<_>>());
        let mut sent: Vec<Command> = Vec::new();
        let mut posted: Vec<Uuid> = Vec::new();
        let mut commands = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let command = match step {
                Step::Transfer { from, to, amount } => transfer(&format!("k{i}"), ACCOUNTS[*from].0, ACCOUNTS[*to].0, *amount),
                Step::Split { from, to, amounts } => post(
                    &format!("k{i}"),
                    &[(ACCOUNTS[*from].0, Side::Debit, amounts[0] + amounts[1]),
                      (ACCOUNTS[to[0]].0, Side::Credit, amounts[0]),
                      (ACCOUNTS[to[1]].0, Side::Credit, amounts[1])],
                    "IDR",
                ),
                Step::Reverse { pick } if !posted.is_empty() => reverse(&format!("k{i}"), posted[pick % posted.len()]),
                Step::Retry { pick } if !sent.is_empty() => sent[pick % sent.len()].clone(),
                Step::Freeze { account, frozen } => status(ACCOUNTS[*account].0, if *frozen { AccountStatus::Frozen } else { AccountStatus::Active }),
                _ => continue,
            };
            // stateless checks happen before a command reaches a shard
            if let Command::Post(p) = &command
                && crate::validate::entries(&p.entries).is_err()
            {
                continue;
            }
            sent.push(command.clone());
            commands.push(command);
            if commands.len() == batch {
                for outcome in shard.run(&commands) {
                    if let Outcome::Posted(p) = outcome { posted.push(p.ledger_tx_id); }
                }
                commands.clear();
            }
        }
        for outcome in shard.run(&commands) {
            if let Outcome::Posted(p) = outcome { posted.push(p.ledger_tx_id); }
        }

        // every key posted at most once
        let mut keys = std::collections::HashSet::new();
        for tx in &shard.transactions {
            prop_assert!(keys.insert(tx.idempotency_key.clone()), "key {} posted twice", tx.idempotency_key);
        }
        // each transaction balances; totals balance
        let mut per_tx: HashMap<Uuid, i128> = HashMap::new();
        let (mut debits, mut credits) = (0i128, 0i128);
        for e in &shard.entries {
            let signed = if e.side == Side::Debit { e.amount_minor as i128 } else { -(e.amount_minor as i128) };
            *per_tx.entry(e.ledger_tx_id).or_default() += signed;
            if e.side == Side::Debit { debits += e.amount_minor as i128 } else { credits += e.amount_minor as i128 }
        }
        prop_assert!(per_tx.values().all(|sum| *sum == 0), "every transaction balances");
        prop_assert_eq!(debits, credits);
        // balance = sum of entries, balance_after walks, never negative where not allowed
        for (code, account_type, allow_negative) in ACCOUNTS {
            let id = crate::ids::account_id(TENANT, code);
            let state = &shard.snapshot.accounts[&id];
            let mut running = 0i64;
            let mut count = 0;
            for e in shard.entries.iter().filter(|e| e.account_id == id) {
                running += signed_delta(account_type, e.side, e.amount_minor);
                count += 1;
                prop_assert_eq!(e.balance_after_minor, running);
                if !allow_negative { prop_assert!(running >= 0, "{} went to {}", code, running); }
            }
            prop_assert_eq!(state.balance_minor, running);
            prop_assert_eq!(state.version, count);
            prop_assert_eq!(balance_from_totals(account_type, state.debits_minor as i128, state.credits_minor as i128), running as i128);
        }
        let seqs: Vec<i64> = shard.transactions.iter().map(|t| t.commit_seq).collect();
        prop_assert_eq!(seqs, (1..=shard.transactions.len() as i64).collect::<Vec<_>>());
    }
}
