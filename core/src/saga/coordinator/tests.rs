//! The coordinator driven against simulated shards that behave as real ones do: a step
//! and its undo are idempotent by (saga, step), a refusal is stored, an undo that comes
//! before its step makes sure the step never runs. Every scenario is run through every
//! leg refusal, every lost request and lost reply, and a crash of the coordinator after
//! every effect, followed by a new coordinator that starts from the log alone.

use super::*;
use crate::currency::Currency;
use serde_json::json;
use std::collections::BTreeSet;

const TENANT: Uuid = Uuid::from_u128(0x7e);

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

/// A saga of `legs` legs, one client entry each (the amounts do not matter here).
fn opened(legs: usize) -> SagaRecord {
    let idr = Currency::parse("IDR").unwrap();
    let steps = (0..legs)
        .map(|i| {
            let entry = EntryCommand {
                account_id: Uuid::from_u128(100 + i as u128),
                side: if i == 0 { Side::Debit } else { Side::Credit },
                amount_minor: 1,
                currency: idr,
            };
            SagaStep::new(i as u16, StepAction::Post { entries: vec![LegEntry { seq: i as i32 + 1, entry }] })
        })
        .collect();
    let header = LegHeader {
        tx_type: "TRANSFER".into(),
        actor: "t".into(),
        reason_code: None,
        business_ref: None,
        external_ref: None,
        occurred_at: None,
        metadata: json!({}),
        entry_count: legs,
    };
    let mut record = SagaRecord::draft(TENANT, "k", "f", SagaKind::Post, header, steps, now());
    record.saga_id = Uuid::from_u128(0x5a6a);
    record
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Posted,
    Refused,
    /// Undone before it ever ran: it never will.
    Barred,
}

/// How the network treats the n-th message the coordinator sends.
#[derive(Debug, Clone, Copy)]
enum Loss {
    None,
    /// The message never arrives.
    Request(usize),
    /// It arrives and is executed; its answer is lost.
    Reply(usize),
}

struct Shards {
    refusing: Option<usize>,
    ran: BTreeMap<usize, Ran>,
    compensated: BTreeSet<usize>,
    forward_executions: BTreeMap<usize, u32>,
    compensations: BTreeMap<usize, u32>,
    sent: usize,
    loss: Loss,
}

impl Shards {
    fn new(refusing: Option<usize>, loss: Loss) -> Shards {
        Shards {
            refusing,
            ran: BTreeMap::new(),
            compensated: BTreeSet::new(),
            forward_executions: BTreeMap::new(),
            compensations: BTreeMap::new(),
            sent: 0,
            loss,
        }
    }

    fn refusal_body() -> Value {
        json!({"error": {"code": "INSUFFICIENT_FUNDS", "message": "m", "details": {}}})
    }

    fn leg_reply(step: usize) -> Value {
        json!({"ledger_tx_id": "x", "posted_at": format!("2026-01-01T00:00:0{step}.000000Z"),
               "entries": [{"account_id": Uuid::from_u128(100 + step as u128), "entry_seq": step + 1, "currency": "IDR"}]})
    }

    /// Sends one message: whether it arrived, and the answer if one came back.
    fn deliver(&mut self, act: impl FnOnce(&mut Shards) -> Learnt) -> Learnt {
        let n = self.sent;
        self.sent += 1;
        match self.loss {
            Loss::Request(m) if m == n => Learnt::NoAnswer,
            Loss::Reply(m) if m == n => {
                act(self);
                Learnt::NoAnswer
            }
            _ => act(self),
        }
    }

    fn forward(&mut self, step: usize) -> Learnt {
        self.deliver(|shards| {
            let ran = *shards.ran.entry(step).or_insert_with(|| {
                *shards.forward_executions.entry(step).or_default() += 1;
                if shards.refusing == Some(step) { Ran::Refused } else { Ran::Posted }
            });
            match ran {
                Ran::Posted => Learnt::Posted { step, reply: Some(Shards::leg_reply(step)) },
                Ran::Refused | Ran::Barred => Learnt::Refused { step, status: 422, body: Shards::refusal_body() },
            }
        })
    }

    fn undo(&mut self, step: usize) -> Learnt {
        self.deliver(|shards| match *shards.ran.entry(step).or_insert(Ran::Barred) {
            Ran::Posted => {
                if shards.compensated.insert(step) {
                    *shards.compensations.entry(step).or_default() += 1;
                }
                Learnt::Undone { step, compensation_tx_id: Some(Uuid::from_u128(0xc0 + step as u128)) }
            }
            Ran::Refused | Ran::Barred => Learnt::Undone { step, compensation_tx_id: None },
        })
    }
}

/// Drives a saga to its end; the coordinator dies after effect number `crash` and a new
/// one resumes from the log. The final log, and the shards.
fn run(legs: usize, refusing: Option<usize>, loss: Loss, crash: Option<usize>) -> (SagaRecord, Shards) {
    let mut shards = Shards::new(refusing, loss);
    let mut log = opened(legs);
    let mut drive = Drive::new(log.clone(), LegReplies::new());
    let mut learnt = Learnt::Begin;
    for effect_number in 0..500 {
        let (next, effect) = step(drive, learnt, now());
        drive = next;
        learnt = match effect {
            Effect::Done => return (log, shards),
            Effect::Forward(step) => shards.forward(step),
            Effect::Undo(step) => shards.undo(step),
            Effect::SettlePosted | Effect::SettleCompensated => shards.deliver(|_| Learnt::Settled),
            Effect::Save(record) => shards.deliver(|_| {
                log = (*record).clone();
                Learnt::Saved(record)
            }),
            Effect::Retry => Learnt::Begin,
            Effect::Stuck(why) => panic!("stuck: {why}"),
        };
        if Some(effect_number) == crash {
            drive = Drive::new(log.clone(), LegReplies::new());
            learnt = Learnt::Begin;
        }
    }
    panic!("the saga did not end");
}

fn statuses(record: &SagaRecord) -> Vec<StepStatus> {
    record.steps.iter().map(|s| s.status).collect()
}

#[test]
fn every_leg_refusal_lost_message_and_crash_ends_the_same_way_posting_nothing_twice() {
    for legs in 2..=4 {
        for refusing in std::iter::once(None).chain((0..legs).map(Some)) {
            let (expected, _) = run(legs, refusing, Loss::None, None);
            let losses = std::iter::once(Loss::None).chain((0..12).flat_map(|m| [Loss::Request(m), Loss::Reply(m)]));
            for loss in losses {
                for crash in std::iter::once(None).chain((0..16).map(Some)) {
                    let case = format!("{legs} legs, refusing {refusing:?}, {loss:?}, crash after effect {crash:?}");
                    let (log, shards) = run(legs, refusing, loss, crash);
                    assert_eq!(log.state, expected.state, "{case}");
                    assert_eq!(statuses(&log), statuses(&expected), "{case}");
                    assert_eq!(log.reply, expected.reply, "{case}: the stored reply");
                    assert!(shards.forward_executions.values().all(|n| *n == 1), "{case}: a step ran twice");
                    assert!(shards.compensations.values().all(|n| *n == 1), "{case}: a leg compensated twice");
                    let posted: BTreeSet<usize> =
                        shards.ran.iter().filter(|(_, ran)| **ran == Ran::Posted).map(|(s, _)| *s).collect();
                    match refusing {
                        None => assert!(shards.compensated.is_empty(), "{case}"),
                        Some(refused) => {
                            assert_eq!(shards.compensated, posted, "{case}: every posted leg undone");
                            assert!(posted.iter().all(|s| *s < refused), "{case}: nothing posts after the refusal");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_saga_that_posts_replies_with_every_clients_entry_in_request_order() {
    let (log, _) = run(3, None, Loss::None, None);
    assert_eq!(log.state, SagaState::Posted);
    let reply = log.reply.unwrap();
    let seqs: Vec<i64> = reply["entries"].as_array().unwrap().iter().map(|e| e["entry_seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(reply["posted_at"], "2026-01-01T00:00:02.000000Z", "the latest leg's time");
}

#[test]
fn a_refused_leg_undoes_the_posted_ones_newest_first_and_the_refusal_tells_the_story() {
    let mut drive = Drive::new(opened(3), LegReplies::new());
    let mut effects = Vec::new();
    let mut learnt = Learnt::Begin;
    let answers = |effect: &Effect| match effect {
        Effect::Forward(2) => Learnt::Refused { step: 2, status: 422, body: Shards::refusal_body() },
        Effect::Forward(step) => Learnt::Posted { step: *step, reply: Some(Shards::leg_reply(*step)) },
        Effect::Undo(step) => Learnt::Undone { step: *step, compensation_tx_id: Some(Uuid::from_u128(*step as u128)) },
        Effect::Save(record) => Learnt::Saved(record.clone()),
        Effect::SettleCompensated => Learnt::Settled,
        other => panic!("unexpected {other:?}"),
    };
    loop {
        let (next, effect) = step(drive, learnt, now());
        drive = next;
        if effect == Effect::Done {
            break;
        }
        learnt = answers(&effect);
        effects.push(match effect {
            Effect::Save(record) => format!("save {}", record.state.as_str()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        effects,
        [
            "Forward(0)",
            "Forward(1)",
            "Forward(2)",
            "save COMPENSATING",
            "Undo(1)",
            "Undo(0)",
            "SettleCompensated",
            "save COMPENSATED"
        ]
    );
    let saga = &drive.record.reply.as_ref().unwrap()["error"]["details"]["saga"];
    assert_eq!(saga["failed_leg"], json!({"step": 2, "shard": 2}));
    assert_eq!(saga["compensations"].as_array().unwrap().len(), 2);
    assert_eq!(drive.record.steps.iter().map(|s| s.attempts).collect::<Vec<_>>(), [2, 2, 1], "sends and undos counted");
}

#[test]
fn a_leg_that_posted_must_replay_as_posted_and_a_refused_undo_is_retried() {
    let mut posted = opened(2);
    for step in 0..2 {
        posted.record_step(step, StepResult::Posted, now());
    }
    let (drive, effect) = step(Drive::new(posted, LegReplies::new()), Learnt::Begin, now());
    assert_eq!(effect, Effect::Forward(0), "a resumed coordinator asks the legs for their replies");
    let (_, effect) = step(drive.clone(), Learnt::Refused { step: 0, status: 422, body: json!({}) }, now());
    assert!(matches!(effect, Effect::Stuck(_)), "{effect:?}");
    let (_, effect) = step(drive, Learnt::Posted { step: 0, reply: None }, now());
    assert!(matches!(effect, Effect::Stuck(_)), "{effect:?}");

    let mut turning_back = opened(2);
    turning_back.record_step(0, StepResult::Posted, now());
    turning_back.record_step(1, StepResult::Refused { status: 422, body: Shards::refusal_body() }, now());
    let (drive, effect) = step(Drive::new(turning_back, LegReplies::new()), Learnt::Begin, now());
    assert_eq!(effect, Effect::Undo(0));
    let (drive, effect) = step(drive, Learnt::UndoRefused { step: 0 }, now());
    assert_eq!(effect, Effect::Retry);
    let (_, effect) = step(drive, Learnt::Begin, now());
    assert_eq!(effect, Effect::Undo(0), "tried again until it posts");
}

#[test]
fn a_first_step_run_with_the_opening_counts_as_sent_and_a_taken_reference_turns_the_saga_back() {
    let posted = Drive::opened(opened(2), Some(Learnt::Posted { step: 0, reply: Some(Shards::leg_reply(0)) }), now());
    assert_eq!((posted.record.steps[0].status, posted.record.steps[0].attempts), (StepStatus::Posted, 1));
    assert_eq!(posted.leg_replies.keys().collect::<Vec<_>>(), [&0]);
    let refused = Drive::opened(opened(2), Some(Learnt::Refused { step: 0, status: 422, body: Shards::refusal_body() }), now());
    assert_eq!(refused.record.state, SagaState::Compensating);
    let (_, effect) = step(refused, Learnt::Begin, now());
    assert_eq!(effect, Effect::SettleCompensated, "nothing posted: nothing to undo, and the turn is saved with the end");
    let not_run = Drive::opened(opened(2), Some(Learnt::NoAnswer), now());
    assert_eq!(not_run.record.steps[0].status, StepStatus::Pending);

    let mut with_reference = opened(2);
    with_reference.header.external_ref = Some(ExternalRef { ref_type: "psp".into(), reference: "r".into() });
    assert!(with_reference.reference_to_claim().is_some());
    let mut claimed = with_reference.clone();
    claimed.take_reference_claim(ReferenceClaim::Claimed, now());
    assert_eq!(claimed.state, SagaState::Running);
    for (claim, code) in
        [(ReferenceClaim::HeldBy(Uuid::nil()), "DUPLICATE_EXTERNAL_REF"), (ReferenceClaim::Pending, "IN_PROGRESS")]
    {
        let mut taken = with_reference.clone();
        taken.take_reference_claim(claim, now());
        assert_eq!(taken.state, SagaState::Compensating);
        assert_eq!(taken.failure.as_ref().and_then(SagaFailure::code).map(|c| c.as_str()), Some(code));
        assert_eq!(taken.reference_to_claim(), None, "a saga that turned back claims no more");
    }
}
