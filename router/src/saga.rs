//! The saga coordinator: cross-shard posts and reversals (see `ledger_core::saga` for the
//! model). Any router runs it, for the requests it serves and, in its recovery loop, for
//! sagas whose coordinator died: the saga log is on the key's home shard and every step
//! is idempotent on its shard, so a coordinator holds nothing that a crash could lose.

use crate::Router;
use crate::dispatch::rejected;
use chrono::Utc;
use ledger_core::command::{
    BeginSagaCommand, ClaimRefCommand, Command, CompleteRefCommand, PostCommand, ReverseCommand, SagaProgressCommand,
    SagaStepCommand,
};
use ledger_core::error_code::ErrorCode;
use ledger_core::rejection::Rejection;
use ledger_core::ring::ShardId;
use ledger_core::saga::{
    Drive, Effect, KnownAccount, Learnt, LegReplies, ReferenceClaim, SagaKind, SagaRecord, SagaState, StepPhase, plan_post,
    plan_reverse, posted_reply, reversed_accounts, reversible, step as saga_step,
};
use ledger_protocol::internal::{AccountFacts, ClaimAnswer, ShardReply, ShardRequest};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};
use uuid::Uuid;

/// How a shard answered a step or an undo.
enum StepAnswer {
    /// Executed now or before; the leg's reply when the step posts entries.
    Done(Option<Value>),
    Refused {
        status: u16,
        body: Value,
    },
    /// No answer (shard down, timeout): the outcome is unknown, send it again later.
    Unknown(ShardReply),
}

/// Waits between re-sends of a step whose outcome is unknown.
const STEP_RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Router {
    /// A post whose accounts live on several shards: its accounts' facts read (or
    /// cached), then the saga the core plans from them, or the refusal it decides first.
    pub(crate) async fn cross_shard_post(&self, command: PostCommand) -> ShardReply {
        let facts = match self.account_facts(command.tenant_id, command.entries.iter().map(|e| e.account_id)).await {
            Ok(facts) => facts,
            Err(reply) => return reply,
        };
        match plan_post(&command, known_in(&facts), |id| self.ring.shard_for_account(id), Utc::now()) {
            Ok(draft) => self.run_saga(draft).await,
            Err(refusal) => rejected(refusal),
        }
    }

    /// The reversal of a cross-shard transaction (see [`plan_reverse`]).
    pub(crate) async fn cross_shard_reverse(&self, command: ReverseCommand, original: SagaRecord) -> ShardReply {
        if let Err(refusal) = reversible(&original) {
            return rejected(refusal);
        }
        let facts = match self.account_facts(command.tenant_id, reversed_accounts(&original).into_iter()).await {
            Ok(facts) => facts,
            Err(reply) => return reply,
        };
        match plan_reverse(&command, &original, known_in(&facts), Utc::now()) {
            Ok(draft) => self.run_saga(draft).await,
            Err(refusal) => rejected(refusal),
        }
    }

    /// Opens the saga on the key's home shard, claims its external reference, drives it
    /// to its end, and answers as the saga log says.
    async fn run_saga(&self, draft: SagaRecord) -> ShardReply {
        let home = self.ring.shard_for_key(draft.tenant_id, &draft.idempotency_key);
        let tenant_id = draft.tenant_id;
        // An external reference is claimed before any step; otherwise the home shard runs
        // the first step with the opening when that step is its own.
        let run_first_step = draft.header.external_ref.is_none();
        let begin = Command::BeginSaga(Box::new(BeginSagaCommand { record: draft.clone(), run_first_step }));
        let answer = self.link.write(home, begin).await;
        let opened = match answer {
            ShardReply::Claim(ClaimAnswer::SagaBegun { saga_id, created_at, first_step }) => {
                let record = SagaRecord { saga_id, created_at, updated_at: created_at, ..draft };
                Drive::opened(record, first_step.map(|reply| forward_learnt(0, *reply)), Utc::now())
            }
            ShardReply::Claim(ClaimAnswer::Replay { ledger_tx_id }) => return self.replay(tenant_id, ledger_tx_id).await,
            ShardReply::Claim(ClaimAnswer::SagaInFlight { saga_id }) => return self.await_saga(home, tenant_id, saga_id).await,
            // a conflict, a replayed refusal, IN_PROGRESS, or the home is unavailable
            ShardReply::Refused { .. } => return answer,
            other => return ShardReply::internal(&format!("unexpected answer to a saga opening: {other:?}")),
        };
        let deadline = Instant::now() + self.link.request_timeout;
        match self.finish_saga(opened.record, deadline, opened.leg_replies).await {
            Ok(record) => saga_reply(&record),
            Err(unavailable) => unavailable,
        }
    }

    /// A retry of a request whose saga is running waits for it (docs/PROTOCOL.md: "IN_PROGRESS
    /// (or wait, bounded)"): the saga's reply, marked replayed, once it ends; IN_PROGRESS
    /// if it does not end within the request timeout.
    async fn await_saga(&self, home: ShardId, tenant_id: Uuid, saga_id: Uuid) -> ShardReply {
        let deadline = Instant::now() + self.link.request_timeout;
        let mut pause = Duration::from_millis(10);
        while Instant::now() + pause < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            let reply = self.link.send(home, &ShardRequest::GetSaga { tenant_id, saga_id }).await;
            let Ok(record) = reply.data::<SagaRecord>("saga log") else { continue };
            if record.state.is_terminal() {
                let reply = saga_reply(&record);
                if let ShardReply::Posted { ledger_tx_id, .. } = reply {
                    let mut body = reply.body_value();
                    body["replayed"] = json!(true);
                    return ShardReply::posted(ledger_tx_id, &body);
                }
                return reply;
            }
        }
        rejected(Rejection::InProgress)
    }

    /// Claims the saga's external reference (again, after a crash: a claim by the same key
    /// is idempotent) and drives the saga to its end; `Err` when shards stayed unreachable
    /// until `deadline` (the saga stays in flight for recovery).
    pub(crate) async fn finish_saga(
        &self,
        mut record: SagaRecord,
        deadline: Instant,
        leg_replies: LegReplies,
    ) -> Result<SagaRecord, ShardReply> {
        if let Some(external_ref) = record.reference_to_claim().cloned() {
            let home = self.ring.shard_for_key(record.tenant_id, &crate::external_ref_home_key(&external_ref));
            let claim = ClaimRefCommand {
                tenant_id: record.tenant_id,
                external_ref,
                idempotency_key: record.idempotency_key.clone(),
                fingerprint: record.fingerprint.clone(),
            };
            let claimed = match self.link.write(home, Command::ClaimRef(claim)).await {
                ShardReply::Claim(ClaimAnswer::Claimed) => ReferenceClaim::Claimed,
                ShardReply::Claim(ClaimAnswer::Held { ledger_tx_id: Some(holder) }) => ReferenceClaim::HeldBy(holder),
                ShardReply::Claim(ClaimAnswer::Held { ledger_tx_id: None }) => ReferenceClaim::Pending,
                other => return Err(other),
            };
            record.take_reference_claim(claimed, Utc::now());
        }
        self.drive(record, deadline, leg_replies).await
    }

    /// Records the saga's outcome at its external reference's home: bound to the saga
    /// when it posted, released when it turned back (unless the reference itself was the
    /// reason). Done before the terminal log is written, so that a coordinator that dies
    /// in between leaves a saga in flight, which recovery settles again.
    async fn settle_reference(&self, record: &SagaRecord, posted: bool) -> Result<(), ShardReply> {
        let Some((external_ref, completion)) = record.reference_completion(posted) else { return Ok(()) };
        let home = self.ring.shard_for_key(record.tenant_id, &crate::external_ref_home_key(&external_ref));
        let complete = CompleteRefCommand {
            tenant_id: record.tenant_id,
            external_ref,
            idempotency_key: record.idempotency_key.clone(),
            completion,
        };
        let answer = self.link.write(home, Command::CompleteRef(complete)).await;
        if answer.is_refusal() { Err(answer) } else { Ok(()) }
    }

    /// Executes the coordinator's effects until the saga ends: every decision is the
    /// core's ([`ledger_core::saga::step`]); this sends, waits and reports. `Err` when
    /// shards stayed unreachable until `deadline` (the saga stays in flight for recovery).
    async fn drive(&self, record: SagaRecord, deadline: Instant, leg_replies: LegReplies) -> Result<SagaRecord, ShardReply> {
        let mut drive = Drive::new(record, leg_replies);
        let mut learnt = Learnt::Begin;
        loop {
            let (next, effect) = saga_step(drive, learnt, Utc::now());
            drive = next;
            learnt = match effect {
                Effect::Done => return Ok(drive.record),
                Effect::Stuck(why) => return Err(ShardReply::internal(&why)),
                Effect::Retry => Learnt::Begin,
                Effect::Forward(step) => match self.send_step(&drive.record, step, StepPhase::Forward).await {
                    StepAnswer::Unknown(reply) => unanswered(deadline, reply).await?,
                    answer => answer.forward(step),
                },
                Effect::Undo(step) => match self.send_step(&drive.record, step, StepPhase::Undo).await {
                    StepAnswer::Done(reply) => {
                        let compensation_tx_id = reply.as_ref().and_then(|r| r["ledger_tx_id"].as_str()?.parse().ok());
                        Learnt::Undone { step, compensation_tx_id }
                    }
                    StepAnswer::Refused { body, .. } => {
                        warn!(saga_id = %drive.record.saga_id, step, %body, "compensation refused; will retry");
                        pause_or_give_up(deadline, compensation_waiting(body)).await?;
                        Learnt::UndoRefused { step }
                    }
                    StepAnswer::Unknown(reply) => unanswered(deadline, reply).await?,
                },
                // The saga cannot turn back any more: its held legs and its reference are
                // settled together, before the log says it posted.
                Effect::SettlePosted => {
                    let (reference, releases) =
                        futures::join!(self.settle_reference(&drive.record, true), self.release_holds(&drive.record));
                    match reference.and(releases) {
                        Ok(()) => Learnt::Settled,
                        Err(reply) => unanswered(deadline, reply).await?,
                    }
                }
                Effect::SettleCompensated => match self.settle_reference(&drive.record, false).await {
                    Ok(()) => Learnt::Settled,
                    Err(reply) => unanswered(deadline, reply).await?,
                },
                Effect::Save(record) => match self.save(*record).await {
                    Ok(stored) => Learnt::Saved(Box::new(stored)),
                    Err(reply) if reply.outcome_unknown() => unanswered(deadline, reply).await?,
                    Err(reply) => return Err(reply),
                },
            };
        }
    }

    /// Writes the coordinator's progress to the saga log once; the log as stored wins
    /// (another coordinator may have moved it further).
    async fn save(&self, record: SagaRecord) -> Result<SagaRecord, ShardReply> {
        let home = ledger_core::ids::shard_of_ledger_id(record.saga_id).expect("saga ids carry their shard");
        let command = Command::SagaProgress(Box::new(SagaProgressCommand { record: record.clone() }));
        match self.link.write(home, command).await {
            ShardReply::Claim(ClaimAnswer::SagaSaved { updated_at }) => Ok(SagaRecord { updated_at, ..record }),
            ShardReply::Claim(ClaimAnswer::Saga { record }) => Ok(*record),
            answer if answer.outcome_unknown() => Err(answer),
            other => Err(ShardReply::internal(&format!("saga log refused progress: {other:?}"))),
        }
    }

    /// Releases every held leg of a saga that posted, concurrently; the one on the saga's
    /// home shard is released by the write of `POSTED` itself
    /// (`SagaProgressCommand::home_release`).
    async fn release_holds(&self, record: &SagaRecord) -> Result<(), ShardReply> {
        let home = ledger_core::ids::shard_of_ledger_id(record.saga_id);
        let held: Vec<usize> = record
            .leg_steps()
            .filter(|(step, leg)| record.holds(*step) && Some(leg.shard) != home)
            .map(|(step, _)| step)
            .collect();
        let answers = futures::future::join_all(held.iter().map(|step| self.send_step(record, *step, StepPhase::Release))).await;
        for answer in answers {
            match answer {
                StepAnswer::Done(_) => {}
                StepAnswer::Unknown(reply) => return Err(reply),
                StepAnswer::Refused { body, .. } => {
                    return Err(ShardReply::internal(&format!("a held saga leg could not be released: {body}")));
                }
            }
        }
        Ok(())
    }

    async fn send_step(&self, record: &SagaRecord, step: usize, phase: StepPhase) -> StepAnswer {
        let target = &record.steps[step];
        #[cfg(all(feature = "fault-injection", debug_assertions))]
        crate::faults::before_step(step, phase).await;
        let command = SagaStepCommand {
            tenant_id: record.tenant_id,
            saga_id: record.saga_id,
            step,
            phase,
            hold: phase == StepPhase::Forward && record.holds(step),
            action: target.action.clone(),
            header: record.header.clone(),
            plan: if phase == StepPhase::Forward { record.plan() } else { Vec::new() },
        };
        step_answer(self.link.write(target.shard, Command::SagaStep(Box::new(command))).await)
    }

    /// Facts about accounts: cached, or read from their shards concurrently.
    async fn account_facts(
        &self,
        tenant_id: Uuid,
        accounts: impl Iterator<Item = Uuid>,
    ) -> Result<HashMap<Uuid, AccountFacts>, ShardReply> {
        let mut facts = HashMap::new();
        let mut by_shard: BTreeMap<ShardId, Vec<Uuid>> = BTreeMap::new();
        {
            let mut cached = self.account_facts.lock().expect("not poisoned");
            for id in accounts {
                match cached.get(&(tenant_id, id)) {
                    Some(known) => {
                        facts.insert(id, known.clone());
                    }
                    None => by_shard.entry(self.ring.shard_for_account(id)).or_default().push(id),
                }
            }
        }
        let reads = by_shard.into_iter().map(|(shard, account_ids)| async move {
            self.link.send(shard, &ShardRequest::AccountFacts { tenant_id, account_ids }).await
        });
        for reply in futures::future::join_all(reads).await {
            let found: Vec<AccountFacts> = reply.data("account facts")?;
            let mut cached = self.account_facts.lock().expect("not poisoned");
            for fact in found {
                cached.put((tenant_id, fact.account_id), fact.clone());
                facts.insert(fact.account_id, fact);
            }
        }
        Ok(facts)
    }

    /// Resumes the sagas logged on `shard` whose coordinator stopped (one pass of the
    /// recovery loop, [`Router::recover`]).
    pub(crate) async fn resume_sagas_on(&self, shard: ShardId) {
        let ask = ShardRequest::StaleSagas { idle_ms: self.config.limits.saga_resume_after_ms, limit: 100 };
        let reply = self.link.send(shard, &ask).await;
        let Ok(records) = reply.data::<Vec<SagaRecord>>("stale sagas") else { return };
        for record in records {
            let saga_id = record.saga_id;
            info!(%saga_id, shard, state = record.state.as_str(), "resuming an abandoned saga");
            let deadline = Instant::now() + self.link.request_timeout;
            match self.finish_saga(record, deadline, LegReplies::new()).await {
                Ok(done) => info!(%saga_id, state = done.state.as_str(), "saga resumed to its end"),
                Err(reply) => warn!(%saga_id, reply = %reply.client_body(), "saga still cannot finish; will retry"),
            }
        }
    }
}

impl StepAnswer {
    /// A forward step's answer as the coordinator learns it (`Unknown` as no answer).
    fn forward(self, step: usize) -> Learnt {
        match self {
            StepAnswer::Done(reply) => Learnt::Posted { step, reply },
            StepAnswer::Refused { status, body } => Learnt::Refused { step, status, body },
            StepAnswer::Unknown(_) => Learnt::NoAnswer,
        }
    }
}

/// The answer to forward step `step`, as the coordinator learns it.
fn forward_learnt(step: usize, reply: ShardReply) -> Learnt {
    step_answer(reply).forward(step)
}

fn step_answer(reply: ShardReply) -> StepAnswer {
    match &reply {
        ShardReply::Claim(ClaimAnswer::Completed) => StepAnswer::Done(None),
        ShardReply::Posted { .. } | ShardReply::Ok(_) => StepAnswer::Done(Some(reply.body_value())),
        _ if reply.outcome_unknown() => StepAnswer::Unknown(reply),
        ShardReply::Refused { code, .. } => StepAnswer::Refused { status: code.status(), body: reply.body_value() },
        other => StepAnswer::Unknown(ShardReply::internal(&format!("unexpected answer to a saga step: {other:?}"))),
    }
}

/// The accounts' facts as the core's planning reads them.
fn known_in<'a>(facts: &'a HashMap<Uuid, AccountFacts>) -> impl Fn(Uuid) -> Option<KnownAccount<'a>> {
    |id| facts.get(&id).map(|f| KnownAccount { account_type: f.account_type, currency: &f.currency })
}

/// An effect whose outcome is unknown: after a pause the coordinator decides again, unless
/// the request's time is up.
async fn unanswered(deadline: Instant, reply: ShardReply) -> Result<Learnt, ShardReply> {
    pause_or_give_up(deadline, reply).await?;
    Ok(Learnt::NoAnswer)
}

async fn pause_or_give_up(deadline: Instant, reply: ShardReply) -> Result<(), ShardReply> {
    if Instant::now() + STEP_RETRY_PAUSE >= deadline {
        return Err(reply);
    }
    tokio::time::sleep(STEP_RETRY_PAUSE).await;
    Ok(())
}

fn compensation_waiting(refusal: Value) -> ShardReply {
    ShardReply::error(
        ErrorCode::ShardUnavailable,
        "a compensation of the transaction is waiting to post; retry with the same key",
        json!({"compensation_refused": refusal}),
    )
}

/// The client's reply of a terminal saga, as stored in its log.
pub(crate) fn saga_reply(record: &SagaRecord) -> ShardReply {
    let reply = record.reply.clone().unwrap_or(Value::Null);
    match (&record.state, &record.failure) {
        (SagaState::Posted, _) => ShardReply::posted(record.saga_id, &reply),
        (_, Some(_)) => ShardReply::stored_refusal(&reply),
        _ => ShardReply::internal("a saga ended without its reply"),
    }
}

impl Router {
    /// `transactions.get` of a cross-shard transaction: its legs, read from their shards,
    /// as one transaction object.
    pub(crate) async fn saga_transaction(&self, record: &SagaRecord) -> ShardReply {
        let reads = record.leg_steps().map(|(step, leg)| {
            let ask = ShardRequest::GetLeg { tenant_id: record.tenant_id, ledger_tx_id: record.saga_id };
            async move { (step, self.link.send(leg.shard, &ask).await) }
        });
        let mut legs = LegReplies::new();
        for (step, reply) in futures::future::join_all(reads).await {
            if reply.is_refusal() {
                return reply;
            }
            legs.insert(step, reply.body_value());
        }
        let merged = posted_reply(record, &legs);
        let Some(first) = legs.values().next() else { return ShardReply::internal("a saga without legs") };
        let reverses = match record.kind {
            SagaKind::Reverse { of } => Some(of),
            SagaKind::Post => None,
        };
        ShardReply::ok(&json!({
            "ledger_tx_id": record.saga_id,
            "type": record.header.tx_type,
            "status": if record.reversed_by.is_some() { "REVERSED" } else { "POSTED" },
            "entries": merged["entries"],
            "reverses_ledger_tx_id": reverses,
            "reversed_by_ledger_tx_id": record.reversed_by,
            "occurred_at": first["occurred_at"],
            "posted_at": merged["posted_at"],
            "actor": record.header.actor,
            "business_ref": record.header.business_ref,
            "external_ref": record.header.external_ref,
            "reason_code": record.header.reason_code,
            "metadata": record.header.metadata,
        }))
    }
}
