use crate::batch::testkit::*;
use crate::batch::*;
use proptest::prelude::*;

use crate::command::{BeginSagaCommand, SagaProgressCommand, SagaStepCommand};
use crate::saga::{LegHeader, PlannedStep, SagaKind, SagaStep, StepStatus, clearing_account_id};

fn header() -> LegHeader {
    LegHeader {
        tx_type: "TRANSFER".into(),
        actor: "test".into(),
        reason_code: None,
        business_ref: None,
        external_ref: None,
        occurred_at: None,
        metadata: json!({}),
        entry_count: 2,
    }
}

fn leg(code: &str, side: Side, amount: i64, seq: i32) -> LegEntry {
    LegEntry {
        seq,
        entry: EntryCommand {
            account_id: crate::ids::account_id(TENANT, code),
            side,
            amount_minor: amount,
            currency: Currency::parse("IDR").unwrap(),
        },
    }
}

/// The plan a coordinator would send with a forward step: its action at `step` on this
/// shard (3), and a leg on another shard that balances it, after it if the step is
/// held (every leg but the last is), else before it.
fn plan_around(step: usize, action: &StepAction, hold: bool) -> Vec<PlannedStep> {
    let elsewhere = |action| PlannedStep { shard: 9, action };
    let counter = match action {
        StepAction::Post { entries } => {
            assert_eq!(entries.len(), 1, "single-entry legs; the other entry is the counter leg's");
            let e = &entries[0];
            let entry = EntryCommand { account_id: Uuid::from_u128(0xc0), side: e.entry.side.opposite(), ..e.entry.clone() };
            StepAction::Post { entries: vec![LegEntry { seq: 3 - e.seq, entry }] }
        }
        StepAction::ClaimReversal { of } | StepAction::Mirror { of } => StepAction::Mirror { of: *of },
    };
    let mut plan: Vec<PlannedStep> = (0..step).map(|_| elsewhere(StepAction::Post { entries: vec![] })).collect();
    plan.push(PlannedStep { shard: 3, action: action.clone() });
    if hold || matches!(action, StepAction::ClaimReversal { .. }) {
        plan.push(elsewhere(counter));
    } else {
        assert!(step >= 1, "an unheld leg is its saga's last: give it a step after the first");
        plan[0] = elsewhere(counter);
    }
    plan
}

fn phase_step(saga_id: Uuid, step: usize, phase: StepPhase, hold: bool, action: StepAction) -> Command {
    let mut header = header();
    if !matches!(action, StepAction::Post { .. }) {
        header.tx_type = TX_TYPE_REVERSAL.into();
    }
    let plan = if phase == StepPhase::Forward { plan_around(step, &action, hold) } else { Vec::new() };
    Command::SagaStep(Box::new(SagaStepCommand { tenant_id: TENANT, saga_id, step, phase, hold, action, header, plan }))
}

fn step(saga_id: Uuid, step: usize, undo: bool, action: StepAction) -> Command {
    phase_step(saga_id, step, if undo { StepPhase::Undo } else { StepPhase::Forward }, false, action)
}

fn held(saga_id: Uuid, step: usize, action: StepAction) -> Command {
    phase_step(saga_id, step, StepPhase::Forward, true, action)
}

fn release(saga_id: Uuid, step: usize, action: StepAction) -> Command {
    phase_step(saga_id, step, StepPhase::Release, false, action)
}

fn account<'s>(shard: &'s Shard, code: &str) -> &'s AccountState {
    &shard.snapshot.accounts[&crate::ids::account_id(TENANT, code)]
}

fn funded_shard() -> Shard {
    let mut shard = Shard::new();
    shard.run(&[
        create("cash", AccountType::Asset, "IDR", true),
        create("alice", AccountType::Liability, "IDR", false),
        transfer("fund", "cash", "alice", 1_000),
    ]);
    shard
}

fn clearing_balance(shard: &Shard) -> i64 {
    let id = clearing_account_id(TENANT, 3, Currency::parse("IDR").unwrap());
    shard.snapshot.accounts.get(&id).map_or(0, |a| a.balance_minor)
}

#[test]
fn a_leg_posts_once_through_the_clearing_account_and_is_undone_once() {
    let mut shard = funded_shard();
    let saga_id = SequentialIds(900).saga_id(at(0), 1);
    let action = StepAction::Post { entries: vec![leg("alice", Side::Debit, 300, 1)] };
    let posted = shard.run(&[step(saga_id, 1, false, action.clone())]);
    let Outcome::Posted(tx) = &posted[0] else { panic!("{posted:?}") };
    assert_eq!(tx.ledger_tx_id, saga_id, "a leg carries its saga's id");
    assert_eq!(tx.entries.iter().map(|e| e.entry_seq).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(shard.balance("alice"), 700);
    assert_eq!(clearing_balance(&shard), -300, "the clearing asset is credited: due from the other shard");
    assert_eq!(shard.run(&[step(saga_id, 1, false, action.clone())]), vec![Outcome::Replay { ledger_tx_id: saga_id }]);
    assert_eq!(shard.balance("alice"), 700, "a re-sent step posts nothing");

    let undone = shard.run(&[step(saga_id, 1, true, action.clone())]);
    let Outcome::Posted(compensation) = &undone[0] else { panic!("{undone:?}") };
    assert_eq!(shard.transactions.last().unwrap().tx_type, TX_TYPE_SAGA_COMPENSATION);
    assert_eq!(shard.transactions.last().unwrap().reverses_ledger_tx_id, Some(saga_id));
    assert_eq!((shard.balance("alice"), clearing_balance(&shard)), (1_000, 0), "exactly where it was");
    let again = shard.run(&[step(saga_id, 1, true, action)]);
    assert_eq!(again, vec![Outcome::Replay { ledger_tx_id: compensation.ledger_tx_id }]);
    assert_eq!(shard.balance("alice"), 1_000);
}

#[test]
fn a_refused_step_stays_refused_and_an_undo_first_blocks_a_late_step() {
    let mut shard = funded_shard();
    let saga_id = SequentialIds(901).saga_id(at(0), 1);
    let too_much = StepAction::Post { entries: vec![leg("alice", Side::Debit, 5_000, 1)] };
    let refused = shard.run(&[step(saga_id, 1, false, too_much.clone())]);
    assert_eq!(code_of(&refused[0]), "INSUFFICIENT_FUNDS");
    shard.run(&[transfer("more", "cash", "alice", 10_000)]);
    let again = shard.run(&[step(saga_id, 1, false, too_much)]);
    assert_eq!(code_of(&again[0]), "REPLAY_REJECTION", "the same answer, even now that funds are there");
    assert_eq!(shard.balance("alice"), 11_000);

    let fine = StepAction::Post { entries: vec![leg("alice", Side::Debit, 100, 1)] };
    assert_eq!(shard.run(&[step(saga_id, 2, true, fine.clone())]), vec![Outcome::Completed]);
    let late = shard.run(&[step(saga_id, 2, false, fine)]);
    let Outcome::ReplayRejection { body, .. } = &late[0] else { panic!("{late:?}") };
    assert_eq!(body["error"]["code"], "SAGA_ABORTED");
    assert_eq!(shard.balance("alice"), 11_000, "a step that arrives after its undo never posts");
}

#[test]
fn a_compensation_never_drives_a_balance_below_zero_and_is_not_stored_when_refused() {
    let mut shard = funded_shard();
    let saga_id = SequentialIds(905).saga_id(at(0), 1);
    // the leg brings 300 to alice; she spends it before the saga turns back
    let action = StepAction::Post { entries: vec![leg("alice", Side::Credit, 300, 2)] };
    assert!(matches!(shard.run(&[step(saga_id, 1, false, action.clone())])[0], Outcome::Posted(_)));
    shard.run(&[create("shop", AccountType::Liability, "IDR", false), transfer("spend", "alice", "shop", 1_300)]);
    assert_eq!(shard.balance("alice"), 0);
    let refused = shard.run(&[step(saga_id, 1, true, action.clone())]);
    assert_eq!(code_of(&refused[0]), "INSUFFICIENT_FUNDS");
    assert_eq!(shard.balance("alice"), 0, "never below zero");
    // not stored: once the money is back, the same undo posts
    shard.run(&[transfer("refund", "shop", "alice", 300)]);
    let undone = shard.run(&[step(saga_id, 1, true, action)]);
    assert!(matches!(undone[0], Outcome::Posted(_)), "{undone:?}");
    assert_eq!(shard.balance("alice"), 0);
    assert_eq!(clearing_balance(&shard), 0);
}

#[test]
fn a_held_leg_cannot_be_spent_or_closed_and_its_compensation_always_posts() {
    let mut shard = funded_shard();
    let saga_id = SequentialIds(906).saga_id(at(0), 1);
    let incoming = StepAction::Post { entries: vec![leg("alice", Side::Credit, 300, 2)] };
    assert!(matches!(shard.run(&[held(saga_id, 0, incoming.clone())])[0], Outcome::Posted(_)));
    assert_eq!((shard.balance("alice"), account(&shard, "alice").held_minor()), (1_300, 300));
    shard.run(&[create("shop", AccountType::Liability, "IDR", false)]);
    let refused = shard.run(&[transfer("spend-all", "alice", "shop", 1_300)]);
    let Outcome::Rejected(rejection) = &refused[0] else { panic!("{refused:?}") };
    assert_eq!(rejection.to_body()["error"]["details"]["held_minor"], 300, "{rejection:?}");
    assert!(matches!(shard.run(&[transfer("spend-own", "alice", "shop", 1_000)])[0], Outcome::Posted(_)));
    let undone = shard.run(&[step(saga_id, 0, true, incoming)]);
    assert!(matches!(undone[0], Outcome::Posted(_)), "the leg undoes although alice spent all she could: {undone:?}");
    assert_eq!((shard.balance("alice"), clearing_balance(&shard)), (0, 0));
    assert!(!account(&shard, "alice").is_settling());
    assert_eq!(shard.writes_of_last_run.holds_settled, vec![saga_id]);

    // a held leg that takes alice to zero: she cannot be closed until it settles
    shard.run(&[transfer("refill", "cash", "alice", 500)]);
    let saga_id = SequentialIds(907).saga_id(at(0), 1);
    let outgoing = StepAction::Post { entries: vec![leg("alice", Side::Debit, 500, 1)] };
    assert!(matches!(shard.run(&[held(saga_id, 0, outgoing.clone())])[0], Outcome::Posted(_)));
    assert_eq!(shard.balance("alice"), 0);
    assert_eq!(code_of(&shard.run(&[status("alice", AccountStatus::Closed)])[0]), "IN_PROGRESS");
    assert!(matches!(shard.run(&[step(saga_id, 0, true, outgoing)])[0], Outcome::Posted(_)));
    assert_eq!(shard.balance("alice"), 500, "the compensation credits a still open account");
}

#[test]
fn a_released_leg_is_final_and_spendable_and_releases_once() {
    let mut shard = funded_shard();
    let saga_id = SequentialIds(908).saga_id(at(0), 1);
    let incoming = StepAction::Post { entries: vec![leg("alice", Side::Credit, 300, 2)] };
    let never_posted = release(SequentialIds(909).saga_id(at(0), 1), 0, incoming.clone());
    assert_eq!(code_of(&shard.run(&[never_posted])[0]), "INVALID_REQUEST");
    shard.run(&[held(saga_id, 0, incoming.clone())]);
    assert_eq!(shard.run(&[release(saga_id, 0, incoming.clone())]), vec![Outcome::Completed]);
    assert_eq!(shard.writes_of_last_run.holds_settled, vec![saga_id]);
    assert_eq!((shard.balance("alice"), account(&shard, "alice").held_minor()), (1_300, 0));
    assert!(!shard.snapshot.accounts.values().any(AccountState::is_settling), "the clearing side settles too");
    assert_eq!(shard.run(&[release(saga_id, 0, incoming)]), vec![Outcome::Completed]);
    assert!(shard.writes_of_last_run.holds_settled.is_empty(), "released once");
    shard.run(&[create("shop", AccountType::Liability, "IDR", false)]);
    assert!(matches!(shard.run(&[transfer("spend-all", "alice", "shop", 1_300)])[0], Outcome::Posted(_)));
}

#[test]
fn clearing_accounts_are_the_ledgers_own() {
    let mut shard = funded_shard();
    let saga_id = SequentialIds(910).saga_id(at(0), 1);
    shard.run(&[step(saga_id, 1, false, StepAction::Post { entries: vec![leg("alice", Side::Debit, 10, 1)] })]);
    let clearing = clearing_account_id(TENANT, 3, Currency::parse("IDR").unwrap());
    let entries = vec![
        EntryCommand { account_id: clearing, side: Side::Debit, amount_minor: 5, currency: Currency::parse("IDR").unwrap() },
        EntryCommand {
            account_id: crate::ids::account_id(TENANT, "alice"),
            side: Side::Credit,
            amount_minor: 5,
            currency: Currency::parse("IDR").unwrap(),
        },
    ];
    let Command::Post(mut direct) = transfer("direct", "cash", "alice", 5) else { unreachable!() };
    direct.entries = entries;
    assert_eq!(code_of(&shard.run(&[Command::Post(direct)])[0]), "FORBIDDEN");
    let close = Command::SetStatus(SetStatusCommand {
        tenant_id: TENANT,
        account_id: clearing,
        status: AccountStatus::Frozen,
        actor: "ops".into(),
        reason_code: None,
    });
    assert_eq!(code_of(&shard.run(&[close])[0]), "FORBIDDEN");
    let into_clearing = LegEntry {
        seq: 1,
        entry: EntryCommand {
            account_id: clearing,
            side: Side::Credit,
            amount_minor: 5,
            currency: Currency::parse("IDR").unwrap(),
        },
    };
    let leg = step(SequentialIds(911).saga_id(at(0), 1), 1, false, StepAction::Post { entries: vec![into_clearing] });
    assert_eq!(code_of(&shard.run(&[leg])[0]), "FORBIDDEN", "not through a saga leg either");
}

#[derive(Debug, Clone)]
enum HoldOp {
    Open { account: usize, side: Side, amount: i64 },
    Transfer { from: usize, to: usize, amount: i64 },
    SetStatus { account: usize, status: AccountStatus },
    Settle { pick: usize, posted: bool },
}

fn hold_op() -> impl Strategy<Value = HoldOp> {
    let side = prop_oneof![Just(Side::Debit), Just(Side::Credit)];
    let status = prop_oneof![Just(AccountStatus::Active), Just(AccountStatus::Frozen), Just(AccountStatus::Closed)];
    prop_oneof![
        3 => (0..ACCOUNTS.len(), side, 1i64..400).prop_map(|(account, side, amount)| HoldOp::Open { account, side, amount }),
        4 => (0..ACCOUNTS.len(), 0..ACCOUNTS.len(), 1i64..400).prop_map(|(from, to, amount)| HoldOp::Transfer { from, to, amount }),
        1 => (0..ACCOUNTS.len(), status).prop_map(|(account, status)| HoldOp::SetStatus { account, status }),
        3 => (0..1000usize, any::<bool>()).prop_map(|(pick, posted)| HoldOp::Settle { pick, posted }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever clients do to the accounts while saga legs are held on them (spend,
    /// freeze, try to close), every held leg can still be undone, and once all legs
    /// have settled nothing is left unsettled.
    #[test]
    fn a_held_leg_can_always_be_undone(ops in proptest::collection::vec(hold_op(), 1..80)) {
        let mut shard = Shard::new();
        shard.run(&ACCOUNTS.iter().map(|(c, t, n)| create(c, *t, "IDR", *n)).collect::<Vec<_>>());
        shard.run(&[transfer("seed-w1", "source", "w1", 500)]);
        let mut open: Vec<(Uuid, StepAction)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                HoldOp::Open { account, side, amount } => {
                    let saga_id = SequentialIds(10_000 + i as u128).saga_id(at(0), 1);
                    let action = StepAction::Post { entries: vec![leg(ACCOUNTS[*account].0, *side, *amount, 1)] };
                    if let Outcome::Posted(_) = shard.run(&[held(saga_id, 0, action.clone())])[0] {
                        open.push((saga_id, action));
                    }
                }
                HoldOp::Transfer { from, to, amount } if from != to => {
                    shard.run(&[transfer(&format!("t{i}"), ACCOUNTS[*from].0, ACCOUNTS[*to].0, *amount)]);
                }
                HoldOp::SetStatus { account, status: to } => {
                    shard.run(&[status(ACCOUNTS[*account].0, *to)]);
                }
                HoldOp::Settle { pick, posted } if !open.is_empty() => {
                    let (saga_id, action) = open.remove(pick % open.len());
                    if *posted {
                        prop_assert_eq!(shard.run(&[release(saga_id, 0, action)]), vec![Outcome::Completed]);
                    } else {
                        let undone = shard.run(&[step(saga_id, 0, true, action)]);
                        prop_assert!(matches!(undone[0], Outcome::Posted(_)), "undo refused: {:?}", undone);
                    }
                }
                _ => {}
            }
        }
        for (saga_id, action) in open.drain(..) {
            let undone = shard.run(&[step(saga_id, 0, true, action)]);
            prop_assert!(matches!(undone[0], Outcome::Posted(_)), "undo refused: {:?}", undone);
        }
        prop_assert!(!shard.snapshot.accounts.values().any(AccountState::is_settling), "all settled");
        for (code, account_type, allow_negative) in ACCOUNTS {
            let id = crate::ids::account_id(TENANT, code);
            let mut running = 0i64;
            for e in shard.entries.iter().filter(|e| e.account_id == id) {
                running += signed_delta(account_type, e.side, e.amount_minor);
                if !allow_negative { prop_assert!(running >= 0, "{} went to {}", code, running); }
            }
            let state = &shard.snapshot.accounts[&id];
            prop_assert_eq!(state.balance_minor, running);
            if state.status == AccountStatus::Closed { prop_assert_eq!(state.balance_minor, 0); }
        }
    }
}

#[test]
fn the_home_shard_runs_its_own_first_step_with_the_opening() {
    let mut shard = funded_shard();
    let mut record = draft("with-step", "f");
    record.steps = vec![
        SagaStep::new(3, StepAction::Post { entries: vec![leg("alice", Side::Debit, 300, 1)] }),
        SagaStep::new(1, StepAction::Post { entries: vec![leg("bob", Side::Credit, 300, 2)] }),
    ];
    let begin_cmd = BeginSagaCommand { record: record.clone(), run_first_step: true };
    let outcome = shard.run(&[Command::BeginSaga(Box::new(begin_cmd.clone()))]).remove(0);
    let Outcome::SagaBegunWithFirstStep(opened, first) = outcome else { panic!("{outcome:?}") };
    let Outcome::Posted(leg_tx) = *first else { panic!("{first:?}") };
    assert_eq!(leg_tx.ledger_tx_id, opened.saga_id);
    assert_eq!(shard.balance("alice"), 700);
    // the same step sent again by a coordinator replays
    let again = shard.run(&[Command::SagaStep(Box::new(begin_cmd.first_step(opened.saga_id)))]);
    assert_eq!(again, vec![Outcome::Replay { ledger_tx_id: opened.saga_id }]);
    assert_eq!(shard.balance("alice"), 700);
    // a first step refused is stored like any step; a first step elsewhere is not run
    let mut refused = draft("refused-first", "f");
    refused.steps = vec![
        SagaStep::new(3, StepAction::Post { entries: vec![leg("alice", Side::Debit, 5_000, 1)] }),
        SagaStep::new(1, StepAction::Post { entries: vec![leg("bob", Side::Credit, 5_000, 2)] }),
    ];
    let begin_cmd = BeginSagaCommand { record: refused.clone(), run_first_step: true };
    let outcome = shard.run(&[Command::BeginSaga(Box::new(begin_cmd.clone()))]).remove(0);
    let Outcome::SagaBegunWithFirstStep(opened, first) = outcome else { panic!("{outcome:?}") };
    assert_eq!(code_of(&first), "INSUFFICIENT_FUNDS");
    let again = shard.run(&[Command::SagaStep(Box::new(begin_cmd.first_step(opened.saga_id)))]);
    assert_eq!(code_of(&again[0]), "REPLAY_REJECTION");
    let elsewhere = BeginSagaCommand { record: draft("elsewhere", "f"), run_first_step: true };
    assert!(matches!(shard.run(&[Command::BeginSaga(Box::new(elsewhere))])[0], Outcome::SagaBegun(_)));
}

#[test]
fn a_saga_that_posted_releases_its_home_leg_with_the_log() {
    let mut shard = funded_shard();
    let mut record = draft("home-leg", "f");
    record.steps = vec![
        SagaStep::new(3, StepAction::Post { entries: vec![leg("alice", Side::Debit, 300, 1)] }),
        SagaStep::new(1, StepAction::Post { entries: vec![leg("bob", Side::Credit, 300, 2)] }),
    ];
    let begin = BeginSagaCommand { record: record.clone(), run_first_step: true };
    let outcome = shard.run(&[Command::BeginSaga(Box::new(begin))]).remove(0);
    let Outcome::SagaBegunWithFirstStep(opened, _) = outcome else { panic!("{outcome:?}") };
    assert!(account(&shard, "alice").is_settling(), "the first of two legs is held");
    let mut done = (*opened).clone();
    done.record_step(0, crate::saga::StepResult::Posted, at(5));
    done.record_step(1, crate::saga::StepResult::Posted, at(5));
    done.finish(json!({}), at(5));
    let command = SagaProgressCommand { record: done };
    assert_eq!(command.home_release().map(|r| r.step), Some(0));
    let saved = shard.run(&[Command::SagaProgress(Box::new(command))]);
    assert!(matches!(saved[0], Outcome::SagaSaved { .. }), "{saved:?}");
    assert_eq!(shard.writes_of_last_run.holds_settled, vec![opened.saga_id]);
    assert!(!shard.snapshot.accounts.values().any(AccountState::is_settling));
}

fn draft(key: &str, fingerprint: &str) -> SagaRecord {
    let entries = vec![leg("x", Side::Debit, 5, 1), leg("y", Side::Credit, 5, 2)];
    let steps = vec![SagaStep::new(1, StepAction::Post { entries })];
    SagaRecord::draft(TENANT, key, fingerprint, SagaKind::Post, header(), steps, at(0))
}

fn begin(shard: &mut Shard, key: &str, fingerprint: &str) -> Outcome {
    let begin = BeginSagaCommand { record: draft(key, fingerprint), run_first_step: false };
    shard.run(&[Command::BeginSaga(Box::new(begin))]).remove(0)
}

fn progress(shard: &mut Shard, record: &SagaRecord) -> SagaRecord {
    let outcome = shard.run(&[Command::SagaProgress(Box::new(SagaProgressCommand { record: record.clone() }))]);
    match &outcome[0] {
        Outcome::SagaSaved { .. } => shard.snapshot.sagas[&record.saga_id].clone(),
        Outcome::Saga(stored) => (**stored).clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_saga_holds_its_key_until_it_ends_and_then_replays() {
    let mut shard = Shard::new();
    let Outcome::SagaBegun(record) = begin(&mut shard, "k", "f") else { panic!() };
    assert!(crate::ids::is_saga_id(record.saga_id));
    assert_eq!(begin(&mut shard, "k", "f"), Outcome::SagaInFlight { saga_id: record.saga_id });
    assert_eq!(code_of(&begin(&mut shard, "k", "other")), "IDEMPOTENCY_CONFLICT");
    assert_eq!(code_of(&shard.run(&[transfer("k", "a", "b", 1)])[0]), "IDEMPOTENCY_CONFLICT");

    let mut done = (*record).clone();
    done.record_step(0, crate::saga::StepResult::Posted, at(5));
    done.finish(json!({"ledger_tx_id": record.saga_id}), at(5));
    let stored = progress(&mut shard, &done);
    assert_eq!(stored.state, SagaState::Posted);
    assert_eq!(stored.steps[0].status, StepStatus::Posted);
    assert_eq!(progress(&mut shard, &record), stored, "a stale record never moves the saga back");
    assert_eq!(begin(&mut shard, "k", "f"), Outcome::Replay { ledger_tx_id: record.saga_id });
}

#[test]
fn a_turned_back_saga_stores_its_refusal_as_a_single_shard_request_would() {
    let mut shard = Shard::new();
    for (key, status, code, stored) in [("funds", 422, "INSUFFICIENT_FUNDS", true), ("missing", 404, "ACCOUNT_NOT_FOUND", false)]
    {
        let Outcome::SagaBegun(record) = begin(&mut shard, key, "f") else { panic!() };
        let mut done = (*record).clone();
        let body = json!({"error": {"code": code, "message": "", "details": {}}});
        done.record_step(0, crate::saga::StepResult::Refused { status, body: body.clone() }, at(5));
        done.finish(body, at(5));
        assert_eq!(progress(&mut shard, &done).state, SagaState::Compensated);
        let again = begin(&mut shard, key, "f");
        if stored {
            assert!(matches!(again, Outcome::ReplayRejection { status: 422, .. }), "{again:?}");
        } else {
            assert!(matches!(again, Outcome::SagaBegun(_)), "a 404 consumes no key: {again:?}");
        }
    }
}

#[test]
fn a_saga_transaction_is_claimed_for_reversal_once() {
    let mut shard = Shard::new();
    let Outcome::SagaBegun(record) = begin(&mut shard, "x", "f") else { panic!() };
    let mut posted = (*record).clone();
    posted.record_step(0, crate::saga::StepResult::Posted, at(5));
    posted.finish(json!({}), at(5));
    progress(&mut shard, &posted);
    let first = SequentialIds(1000).saga_id(at(6), 3);
    let second = SequentialIds(2000).saga_id(at(6), 3);
    let claim = StepAction::ClaimReversal { of: record.saga_id };
    assert_eq!(shard.run(&[step(first, 0, false, claim.clone())]), vec![Outcome::Completed]);
    assert_eq!(shard.run(&[step(first, 0, false, claim.clone())]), vec![Outcome::Completed]);
    assert_eq!(code_of(&shard.run(&[step(second, 0, false, claim.clone())])[0]), "ALREADY_REVERSED");
    assert_eq!(shard.snapshot.sagas[&record.saga_id].reversed_by, Some(first));
    // the first reversal turned back: its claim is released, and a later one may claim
    assert_eq!(shard.run(&[step(first, 0, true, claim.clone())]), vec![Outcome::Completed]);
    assert_eq!(shard.snapshot.sagas[&record.saga_id].reversed_by, None);
    let third = SequentialIds(3000).saga_id(at(7), 3);
    assert_eq!(shard.run(&[step(third, 0, false, claim)]), vec![Outcome::Completed]);
    assert_eq!(shard.snapshot.sagas[&record.saga_id].reversed_by, Some(third));
}
