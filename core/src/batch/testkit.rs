//! Fixtures for the planner's tests: commands by name and an in-memory shard that applies
//! plans the way the shell commits them.

// The tests' shared vocabulary: everything they name comes in with `use testkit::*`.
use super::*;
pub use crate::account::{AccountState, AccountStatus};
pub use crate::command::{
    AbandonKeyCommand, ClaimKeyCommand, ClaimRefCommand, Command, CompleteKeyCommand, CompleteRefCommand, CreateAccountCommand,
    EntryCommand, ExternalRef, KeyCompletion, PostCommand, RefCompletion, ReverseCommand, SetStatusCommand,
};
pub use crate::currency::Currency;
pub use crate::ids::IdSource;
pub use crate::ids::SequentialIds;
pub use crate::money::Side;
pub use crate::money::{AccountType, balance_from_totals, signed_delta};
pub use crate::outbox_form;
pub use crate::saga::{LegEntry, SagaRecord, SagaState, StepAction, StepPhase, TX_TYPE_SAGA_COMPENSATION};
pub use chrono::{DateTime, Utc};
pub use serde_json::json;
pub use std::collections::HashMap;
pub use uuid::Uuid;

pub const TENANT: Uuid = Uuid::from_u128(0xabc);

pub fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000 + second, 0).unwrap()
}

pub fn create(code: &str, account_type: AccountType, currency: &str, allow_negative: bool) -> Command {
    Command::CreateAccount(CreateAccountCommand {
        tenant_id: TENANT,
        account_id: crate::ids::account_id(TENANT, code),
        code: code.into(),
        account_type,
        currency: Currency::parse(currency).unwrap(),
        allow_negative,
        metadata: json!({}),
    })
}

pub fn post(key: &str, legs: &[(&str, Side, i64)], currency: &str) -> Command {
    let entries = legs
        .iter()
        .map(|(code, side, amount)| EntryCommand {
            account_id: crate::ids::account_id(TENANT, code),
            side: *side,
            amount_minor: *amount,
            currency: Currency::parse(currency).unwrap(),
        })
        .collect();
    let mut command = PostCommand {
        tenant_id: TENANT,
        idempotency_key: key.into(),
        fingerprint: String::new(),
        tx_type: "TRANSFER".into(),
        entries,
        external_ref: None,
        business_ref: None,
        occurred_at: None,
        actor: "test".into(),
        reason_code: None,
        metadata: json!({}),
        external_ref_held_by: None,
    };
    command.fingerprint = crate::fingerprint::fingerprint("transactions.post", &command);
    Command::Post(command)
}

pub fn transfer(key: &str, from: &str, to: &str, amount: i64) -> Command {
    post(key, &[(from, Side::Debit, amount), (to, Side::Credit, amount)], "IDR")
}

pub fn reverse(key: &str, ledger_tx_id: Uuid) -> Command {
    Command::Reverse(ReverseCommand {
        tenant_id: TENANT,
        idempotency_key: key.into(),
        fingerprint: format!("reverse-{key}-{ledger_tx_id}"),
        ledger_tx_id,
        actor: "ops".into(),
        reason_code: "X".into(),
    })
}

pub fn status(code: &str, status: AccountStatus) -> Command {
    Command::SetStatus(SetStatusCommand {
        tenant_id: TENANT,
        account_id: crate::ids::account_id(TENANT, code),
        status,
        actor: "ops".into(),
        reason_code: None,
    })
}

/// A shard in memory: applies plans the way the shell commits them.
pub struct Shard {
    pub snapshot: Snapshot,
    pub next_commit_seq: i64,
    pub ids: SequentialIds,
    pub clock: i64,
    pub entries: Vec<EntryRow>,
    pub transactions: Vec<TxRow>,
    pub writes_of_last_run: Writes,
}

impl Shard {
    pub fn new() -> Shard {
        Shard {
            snapshot: Snapshot::default(),
            next_commit_seq: 1,
            ids: SequentialIds::default(),
            clock: 0,
            entries: vec![],
            transactions: vec![],
            writes_of_last_run: Writes::default(),
        }
    }

    pub fn run(&mut self, commands: &[Command]) -> Vec<Outcome> {
        self.clock += 1;
        let input = BatchInput { shard_id: 3, now: at(self.clock), next_commit_seq: self.next_commit_seq };
        let plan = plan_batch(input, &mut self.snapshot, commands, &mut self.ids);
        self.next_commit_seq = plan.next_commit_seq;
        self.entries.extend(plan.writes.entries.iter().cloned());
        self.transactions.extend(plan.writes.transactions.iter().cloned());
        self.writes_of_last_run = plan.writes;
        plan.outcomes
    }

    pub fn balance(&self, code: &str) -> i64 {
        self.snapshot.accounts[&crate::ids::account_id(TENANT, code)].balance_minor
    }
}

pub fn code_of(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Posted(_) => "POSTED",
        Outcome::Replay { .. } => "REPLAY",
        Outcome::ReplayRejection { .. } => "REPLAY_REJECTION",
        Outcome::Rejected(r) => r.code(),
        Outcome::Account { .. } => "ACCOUNT",
        Outcome::KeyClaimed => "KEY_CLAIMED",
        Outcome::RefClaimed => "REF_CLAIMED",
        Outcome::RefHeld { ledger_tx_id: Some(_) } => "REF_HELD_POSTED",
        Outcome::RefHeld { ledger_tx_id: None } => "REF_HELD_PENDING",
        Outcome::Completed => "COMPLETED",
        Outcome::SagaBegun(_) => "SAGA_BEGUN",
        Outcome::SagaBegunWithFirstStep(..) => "SAGA_BEGUN_WITH_STEP",
        Outcome::SagaInFlight { .. } => "SAGA_IN_FLIGHT",
        Outcome::Saga(_) => "SAGA",
        Outcome::SagaSaved { .. } => "SAGA_SAVED",
    }
}

pub fn fingerprint_of(command: &Command) -> String {
    match command {
        Command::Post(p) => p.fingerprint.clone(),
        _ => unreachable!("posts only"),
    }
}

pub fn claim(key: &str, fingerprint: &str) -> Command {
    Command::ClaimKey(ClaimKeyCommand {
        tenant_id: TENANT,
        idempotency_key: key.into(),
        fingerprint: fingerprint.into(),
        target_shard: 2,
    })
}

pub fn complete(key: &str, fingerprint: &str, completion: KeyCompletion) -> Command {
    Command::CompleteKey(CompleteKeyCommand {
        tenant_id: TENANT,
        idempotency_key: key.into(),
        fingerprint: fingerprint.into(),
        completion,
    })
}

pub fn external(reference: &str) -> ExternalRef {
    ExternalRef { ref_type: "psp".into(), reference: reference.into() }
}

pub fn claim_ref(reference: &str, key: &str) -> Command {
    Command::ClaimRef(ClaimRefCommand {
        tenant_id: TENANT,
        external_ref: external(reference),
        idempotency_key: key.into(),
        fingerprint: format!("fp-{key}"),
    })
}

pub fn complete_ref(reference: &str, key: &str, completion: RefCompletion) -> Command {
    Command::CompleteRef(CompleteRefCommand {
        tenant_id: TENANT,
        external_ref: external(reference),
        idempotency_key: key.into(),
        completion,
    })
}

pub fn setup() -> Shard {
    let mut shard = Shard::new();
    shard.run(&[
        create("cash", AccountType::Asset, "IDR", false),
        create("alice", AccountType::Liability, "IDR", false),
        create("bob", AccountType::Liability, "IDR", false),
        create("usd", AccountType::Liability, "USD", false),
        create("credit", AccountType::Liability, "IDR", true),
    ]);
    shard
}

/// Six accounts of every kind, two of them allowed to go negative.
pub const ACCOUNTS: [(&str, AccountType, bool); 6] = [
    ("source", AccountType::Equity, true),
    ("w1", AccountType::Liability, false),
    ("w2", AccountType::Liability, false),
    ("bank", AccountType::Asset, false),
    ("fees", AccountType::Revenue, false),
    ("overdraft", AccountType::Liability, true),
];
