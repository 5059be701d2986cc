//! The saga coordinator as a pure step: [`step`] takes what the coordinator knows and
//! what it just learnt, and gives what it knows now and the one thing to do next. The
//! router only executes the effects (sends a step, settles, writes the log) and reports
//! how each went; every decision is here, and the tests below drive it through every
//! leg refusal, every unanswered message and every crash of the coordinator.
//!
//! What a coordinator holds beyond the log is only the replies of the legs it saw post;
//! a coordinator that resumes after a crash starts from the log alone and learns them
//! again by re-sending the steps, which replay on their shards.

use super::*;
use crate::rejection::Rejection;

/// What the coordinator knows of one saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Drive {
    pub record: SagaRecord,
    pub leg_replies: LegReplies,
    /// The state the log had when it was last written: a change is written before the
    /// saga goes on, so that a coordinator that resumes never repeats a turn.
    saved_state: SagaState,
}

impl Drive {
    /// A drive of `record` as the log holds it, with the leg replies already known.
    pub fn new(record: SagaRecord, leg_replies: LegReplies) -> Drive {
        Drive { saved_state: record.state, record, leg_replies }
    }

    /// A saga its home shard has just opened, with the answer of its first step when the
    /// home executed that step in the same batch: the answer a send of step 0 would have
    /// got. Whatever else came back, the step was not executed and is sent as usual.
    pub fn opened(mut record: SagaRecord, first_step: Option<Learnt>, now: DateTime<Utc>) -> Drive {
        let mut leg_replies = LegReplies::new();
        if let Some(learnt) = first_step {
            record.count_attempt(0);
            match learnt {
                Learnt::Posted { reply, .. } => {
                    leg_replies.extend(reply.map(|reply| (0, reply)));
                    record.record_step(0, StepResult::Posted, now);
                }
                Learnt::Refused { status, body, .. } => record.record_step(0, StepResult::Refused { status, body }, now),
                _ => {}
            }
        }
        Drive::new(record, leg_replies)
    }
}

/// How the home of a saga's external reference answered the saga's claim of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceClaim {
    Claimed,
    /// A posted transaction holds it.
    HeldBy(Uuid),
    /// Another request holds it and is still being decided.
    Pending,
}

impl SagaRecord {
    /// The external reference the coordinator must claim before it drives the saga, if
    /// any. Only a saga that has not turned back claims: one that turned back either
    /// holds the claim already (and releases it when it ends) or was refused for it. A
    /// claim by the same key is idempotent, so a resuming coordinator claims again.
    pub fn reference_to_claim(&self) -> Option<&ExternalRef> {
        self.header.external_ref.as_ref().filter(|_| self.state == SagaState::Running)
    }

    /// Takes the claim's answer: a reference another transaction holds, or is still being
    /// decided with, turns the saga back before any step.
    pub fn take_reference_claim(&mut self, claim: ReferenceClaim, now: DateTime<Utc>) {
        let refusal = match claim {
            ReferenceClaim::Claimed => return,
            ReferenceClaim::HeldBy(holder) => Rejection::DuplicateExternalRef { ledger_tx_id: holder },
            ReferenceClaim::Pending => Rejection::InProgress,
        };
        self.refuse(refusal.status(), refusal.to_body(), now);
    }
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send step `step` forward: to execute it, or, once the saga can post, to learn the
    /// reply of a leg posted before this coordinator.
    Forward(usize),
    /// Send the undo of step `step`.
    Undo(usize),
    /// The saga can no longer turn back: bind its external reference and settle its held
    /// legs, before the log says it posted.
    SettlePosted,
    /// The saga turned back and every posted leg is undone: release its external
    /// reference.
    SettleCompensated,
    /// Write the log; answer with the log as stored.
    Save(Box<SagaRecord>),
    /// What was sent got no answer, or one that cannot be taken yet: send it again after
    /// a pause (or leave the saga to recovery once the request's time is up).
    Retry,
    /// A shard answered what no shard may answer; the saga stays in flight.
    Stuck(String),
    /// The saga is terminal: its reply is in the log.
    Done,
}

/// How the executed effect went.
#[derive(Debug, Clone, PartialEq)]
pub enum Learnt {
    /// Nothing yet: the drive begins (or resumes) here.
    Begin,
    /// A forward step executed (now or before); the leg's reply when it posts entries.
    Posted { step: usize, reply: Option<Value> },
    /// A forward step was refused (now or before), as its shard said.
    Refused { step: usize, status: u16, body: Value },
    /// An undo executed (now or before): the compensating transaction, if it posted one.
    Undone { step: usize, compensation_tx_id: Option<Uuid> },
    /// An undo was refused: a compensation that cannot post yet.
    UndoRefused { step: usize },
    /// No answer (a shard down, a timeout): the outcome is unknown.
    NoAnswer,
    /// The reference and the holds are settled as the saga's end needs.
    Settled,
    /// The log as stored after a write (another coordinator may have moved it further).
    Saved(Box<SagaRecord>),
}

/// One step of the coordinator.
pub fn step(mut drive: Drive, learnt: Learnt, now: DateTime<Utc>) -> (Drive, Effect) {
    // Once every step posted, a forward send only asks a leg for its reply again: it
    // must replay as posted, with its reply.
    let replaying = drive.record.next_action() == Some(NextAction::FinishPosted);
    match learnt {
        Learnt::Begin => {}
        Learnt::Posted { step, reply: None } if replaying && drive.record.steps[step].action.posts_leg() => {
            return (drive, Effect::Stuck(format!("posted saga leg {step} replayed without its reply")));
        }
        Learnt::Posted { step, reply } => {
            if let Some(reply) = reply {
                drive.leg_replies.insert(step, reply);
            }
            drive.record.record_step(step, StepResult::Posted, now);
        }
        Learnt::Refused { step, body, .. } if replaying => {
            return (drive, Effect::Stuck(format!("posted saga leg {step} now answers a refusal: {body}")));
        }
        Learnt::Refused { step, status, body } => {
            drive.record.record_step(step, StepResult::Refused { status, body }, now);
        }
        Learnt::Undone { step, compensation_tx_id } => drive.record.record_undo(step, compensation_tx_id, now),
        // Only an unheld leg's compensation can be refused (funds spent, an account
        // closed), and only a last leg is unheld, which is never undone; logs from before
        // holds existed may still have one. It is tried again until it posts: money is
        // never left stranded.
        Learnt::UndoRefused { .. } | Learnt::NoAnswer => return (drive, Effect::Retry),
        Learnt::Settled => match drive.record.next_action() {
            Some(NextAction::FinishPosted) => {
                let reply = posted_reply(&drive.record, &drive.leg_replies);
                drive.record.finish(reply, now);
            }
            Some(NextAction::FinishCompensated) => {
                let reply = refusal_reply(&drive.record);
                drive.record.finish(reply, now);
            }
            _ => {}
        },
        Learnt::Saved(stored) => {
            drive.saved_state = stored.state;
            drive.record = *stored;
        }
    }
    if drive.record.state != drive.saved_state {
        let record = Box::new(drive.record.clone());
        return (drive, Effect::Save(record));
    }
    let effect = match drive.record.next_action() {
        None => Effect::Done,
        Some(NextAction::Do(step)) => {
            drive.record.count_attempt(step);
            Effect::Forward(step)
        }
        Some(NextAction::Undo(step)) => {
            drive.record.count_attempt(step);
            Effect::Undo(step)
        }
        Some(NextAction::FinishPosted) => {
            // legs posted by an earlier coordinator replay their replies first
            match drive.record.leg_steps().map(|(step, _)| step).find(|step| !drive.leg_replies.contains_key(step)) {
                Some(step) => Effect::Forward(step),
                None => Effect::SettlePosted,
            }
        }
        Some(NextAction::FinishCompensated) => Effect::SettleCompensated,
    };
    (drive, effect)
}

#[cfg(test)]
mod tests;
