//! The shard writer's own check of every command it is handed, whoever sent it.
//!
//! The router checks a request before it routes it, but the writer cannot know that a
//! command came from a router: anything that reaches the shard's internal subject, or a
//! bug in the router, could hand it a command no client request would produce. So
//! [`crate::batch::plan_batch`] runs [`command`] on each command before deciding it: the
//! stateless rules of the protocol, with the same functions and so the same codes and
//! messages the router answers with ([`crate::validate`]), and the rules of the internal
//! commands (a saga's plan balances, a step is the part of that plan it claims to be, a
//! stored refusal is a refusal). A refused command writes nothing; its neighbours in the
//! batch go on. The rules that need state (accounts, currencies of accounts, statuses,
//! funds, clearing accounts, keys) the planner checks against the state it holds.

use crate::batch::{TX_TYPE_REVERSAL, rejection_is_stored};
use crate::command::{
    BeginSagaCommand, Command, CompleteKeyCommand, CreateAccountCommand, EntryCommand, KeyCompletion, ReverseCommand,
    SagaStepCommand, SetStatusCommand,
};
use crate::rejection::Rejection;
use crate::saga::{LegEntry, LegHeader, PlannedStep, SagaKind, SagaRecord, SagaState, StepAction, StepPhase, StepStatus};
use crate::validate::{self, ACTOR_CHARS_MAX, BUSINESS_REF_CHARS_MAX, ENTRIES_MAX, REASON_CODE_CHARS_MAX};

/// Fingerprints are SHA-256 in hex (64 characters); the bound keeps a forged one small.
pub const FINGERPRINT_CHARS_MAX: usize = 128;

/// Checks the stateless rules of `command`, handed to the writer of shard `shard_id`; the
/// first rule it breaks, as the router would have answered it.
pub fn command(command: &Command, shard_id: u16) -> Result<(), Rejection> {
    match command {
        Command::CreateAccount(c) => create_account(c),
        Command::SetStatus(c) => set_status(c),
        Command::Post(c) => validate::post(c),
        Command::Reverse(c) => reverse(c),
        Command::ClaimKey(c) => key_and_fingerprint(&c.idempotency_key, &c.fingerprint),
        Command::CompleteKey(c) => complete_key(c),
        Command::ClaimRef(c) => {
            validate::external_ref("external_ref", &c.external_ref)?;
            validate::idempotency_key("idempotency_key", &c.idempotency_key)?;
            // claims written before the fingerprint was kept carry none
            if c.fingerprint.is_empty() { Ok(()) } else { fingerprint(&c.fingerprint) }
        }
        Command::CompleteRef(c) => {
            validate::external_ref("external_ref", &c.external_ref)?;
            validate::idempotency_key("idempotency_key", &c.idempotency_key)
        }
        Command::AbandonKey(c) => key_and_fingerprint(&c.idempotency_key, &c.fingerprint),
        Command::BeginSaga(c) => begin_saga(c),
        Command::SagaProgress(c) => {
            // the planner compares a progress record with the log it replaces
            // (`SagaRecord::accepts_progress`); here only its own shape
            key_and_fingerprint(&c.record.idempotency_key, &c.record.fingerprint)
        }
        Command::SagaStep(c) => saga_step(c, shard_id),
    }
}

fn fingerprint(fingerprint: &str) -> Result<(), Rejection> {
    if fingerprint.is_empty() || fingerprint.len() > FINGERPRINT_CHARS_MAX || !fingerprint.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::invalid("fingerprint", format!("must be 1-{FINGERPRINT_CHARS_MAX} printable characters")));
    }
    Ok(())
}

fn key_and_fingerprint(key: &str, print: &str) -> Result<(), Rejection> {
    validate::idempotency_key("idempotency_key", key)?;
    fingerprint(print)
}

fn create_account(command: &CreateAccountCommand) -> Result<(), Rejection> {
    validate::account_code("code", &command.code)?;
    // ids are derived from tenant and code (docs/PROTOCOL.md, "Accounts"): an account under any
    // other id would be one no client can name, or another account's
    if command.account_id != crate::ids::account_id(command.tenant_id, &command.code) {
        return Err(Rejection::invalid("account_id", "is not the id derived from the tenant and the code"));
    }
    validate::metadata("metadata", &command.metadata)
}

fn set_status(command: &SetStatusCommand) -> Result<(), Rejection> {
    validate::text("actor", &command.actor, ACTOR_CHARS_MAX)?;
    validate::optional_text("reason_code", command.reason_code.as_ref(), REASON_CODE_CHARS_MAX)
}

fn reverse(command: &ReverseCommand) -> Result<(), Rejection> {
    key_and_fingerprint(&command.idempotency_key, &command.fingerprint)?;
    validate::text("actor", &command.actor, ACTOR_CHARS_MAX)?;
    validate::text("reason_code", &command.reason_code, REASON_CODE_CHARS_MAX)
}

/// A completion may record a posting, a release, or a refusal the protocol stores under
/// the key (409 or 422 with an error body): never a reply of any other kind.
fn complete_key(command: &CompleteKeyCommand) -> Result<(), Rejection> {
    key_and_fingerprint(&command.idempotency_key, &command.fingerprint)?;
    if let KeyCompletion::Rejected { status, body } = &command.completion {
        let has_code = body.pointer("/error/code").is_some_and(serde_json::Value::is_string);
        if !has_code || !rejection_is_stored(*status, body) {
            return Err(Rejection::invalid("completion", "only a refusal with status 409 or 422 is stored under a key"));
        }
    }
    Ok(())
}

/// What every leg of a saga posts with, checked as a post's fields are.
fn leg_header(header: &LegHeader, kind: &SagaKind) -> Result<(), Rejection> {
    match kind {
        SagaKind::Post => validate::tx_type("type", &header.tx_type)?,
        SagaKind::Reverse { .. } if header.tx_type == TX_TYPE_REVERSAL => {}
        SagaKind::Reverse { .. } => return Err(Rejection::invalid("type", "a reversal's legs post as REVERSAL")),
    }
    if let Some(reference) = &header.external_ref {
        validate::external_ref("external_ref", reference)?;
    }
    validate::optional_text("business_ref", header.business_ref.as_ref(), BUSINESS_REF_CHARS_MAX)?;
    validate::text("actor", &header.actor, ACTOR_CHARS_MAX)?;
    validate::optional_text("reason_code", header.reason_code.as_ref(), REASON_CODE_CHARS_MAX)?;
    validate::metadata("metadata", &header.metadata)
}

/// A saga's plan is a whole transaction: for a post, its legs' client entries together
/// pass every rule of a post's entries (2-128 of them, amounts in range, balanced per
/// currency, each account once), numbered 1..=n as the header counts them; for a
/// reversal, the claim of the original and one mirror per leg of it.
fn plan(plan: &[PlannedStep], header: &LegHeader, kind: &SagaKind) -> Result<(), Rejection> {
    leg_header(header, kind)?;
    if plan.is_empty() {
        return Err(Rejection::invalid("steps", "a saga has at least one step"));
    }
    match kind {
        SagaKind::Post => {
            let mut legs: Vec<&LegEntry> = Vec::with_capacity(header.entry_count.min(ENTRIES_MAX));
            for step in plan {
                match &step.action {
                    StepAction::Post { entries } => legs.extend(entries),
                    _ => return Err(Rejection::invalid("steps", "a posting saga's steps post legs")),
                }
            }
            let entries: Vec<EntryCommand> = legs.iter().map(|e| e.entry.clone()).collect();
            validate::entries(&entries)?;
            let mut seqs: Vec<i32> = legs.iter().map(|e| e.seq).collect();
            seqs.sort_unstable();
            if header.entry_count != entries.len() || seqs.iter().zip(1..).any(|(seq, expected)| *seq != expected) {
                return Err(Rejection::invalid("steps", "the legs' entries must be numbered 1..n, n the entry count"));
            }
        }
        SagaKind::Reverse { of } => {
            let (claim, mirrors) = plan.split_first().expect("not empty");
            let mirrors_of_it = mirrors.iter().all(|s| s.action == StepAction::Mirror { of: *of });
            if claim.action != (StepAction::ClaimReversal { of: *of }) || mirrors.is_empty() || !mirrors_of_it {
                return Err(Rejection::invalid("steps", "a reversal claims the original, then mirrors its legs"));
            }
        }
    }
    Ok(())
}

/// A saga opens as a draft: running, nothing done, a plan that is a whole transaction.
fn begin_saga(command: &BeginSagaCommand) -> Result<(), Rejection> {
    let record: &SagaRecord = &command.record;
    key_and_fingerprint(&record.idempotency_key, &record.fingerprint)?;
    let fresh = record.steps.iter().all(|s| s.status == StepStatus::Pending && s.compensation_tx_id.is_none());
    if record.state != SagaState::Running || record.failure.is_some() || record.reply.is_some() || !fresh {
        return Err(Rejection::invalid("record", "a saga opens running, with every step pending"));
    }
    plan(&record.plan(), &record.header, &record.kind)
}

/// A forward step carries its saga's plan: the plan is a whole transaction, and the step
/// is the part of it that it claims to be, on this shard, held as the plan says.
fn saga_step(command: &SagaStepCommand, shard_id: u16) -> Result<(), Rejection> {
    if command.phase != StepPhase::Forward {
        // an undo or a release reads what it undoes or releases from this shard's journal
        return Ok(());
    }
    let kind = match &command.action {
        StepAction::Post { .. } => SagaKind::Post,
        StepAction::Mirror { of } | StepAction::ClaimReversal { of } => SagaKind::Reverse { of: *of },
    };
    plan(&command.plan, &command.header, &kind)?;
    let planned = command.plan.get(command.step);
    if planned.map(|s| (s.shard, &s.action)) != Some((shard_id, &command.action)) {
        return Err(Rejection::invalid("step", "is not the step of the saga's plan it names, on this shard"));
    }
    if command.hold != crate::saga::holds_step(command.plan.iter().map(|s| &s.action), command.step) {
        return Err(Rejection::invalid("hold", "every leg but a saga's last is posted held"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{ClaimKeyCommand, PostCommand};
    use crate::currency::Currency;
    use crate::money::{AccountType, Side};
    use crate::saga::SagaStep;
    use chrono::{TimeZone, Utc};
    use serde_json::json;
    use uuid::Uuid;

    const TENANT: Uuid = Uuid::from_u128(7);
    const PRINT: &str = "fp";

    fn entry(account: u128, side: Side, amount_minor: i64) -> EntryCommand {
        EntryCommand { account_id: Uuid::from_u128(account), side, amount_minor, currency: Currency::parse("IDR").unwrap() }
    }

    fn post(entries: Vec<EntryCommand>) -> PostCommand {
        PostCommand {
            tenant_id: TENANT,
            idempotency_key: "k".into(),
            fingerprint: PRINT.into(),
            tx_type: "TRANSFER".into(),
            entries,
            external_ref: None,
            business_ref: None,
            occurred_at: None,
            actor: "svc".into(),
            reason_code: None,
            metadata: json!({}),
            external_ref_held_by: None,
        }
    }

    fn header(entry_count: usize) -> LegHeader {
        LegHeader {
            tx_type: "TRANSFER".into(),
            actor: "svc".into(),
            reason_code: None,
            business_ref: None,
            external_ref: None,
            occurred_at: None,
            metadata: json!({}),
            entry_count,
        }
    }

    fn leg(seq: i32, account: u128, side: Side, amount_minor: i64) -> StepAction {
        StepAction::Post { entries: vec![LegEntry { seq, entry: entry(account, side, amount_minor) }] }
    }

    fn balanced_plan() -> Vec<PlannedStep> {
        vec![
            PlannedStep { shard: 0, action: leg(1, 1, Side::Debit, 5) },
            PlannedStep { shard: 1, action: leg(2, 2, Side::Credit, 5) },
        ]
    }

    fn forward(step: usize, hold: bool, plan: Vec<PlannedStep>) -> Command {
        let action = plan[step].action.clone();
        let saga_id = Uuid::from_u128(99);
        let header = header(2);
        Command::SagaStep(Box::new(SagaStepCommand {
            tenant_id: TENANT,
            saga_id,
            step,
            phase: StepPhase::Forward,
            hold,
            action,
            header,
            plan,
        }))
    }

    fn begin(steps: Vec<PlannedStep>, entry_count: usize) -> Command {
        let steps = steps.into_iter().map(|s| SagaStep::new(s.shard, s.action)).collect();
        let at = Utc.timestamp_opt(0, 0).unwrap();
        let record = SagaRecord::draft(TENANT, "k", PRINT, SagaKind::Post, header(entry_count), steps, at);
        Command::BeginSaga(Box::new(BeginSagaCommand { record, run_first_step: true }))
    }

    /// The code, and the field where the refusal names one.
    fn refusal(command: &Command, shard_id: u16) -> Option<(&'static str, String)> {
        super::command(command, shard_id).err().map(|r| (r.code(), r.details()["field"].as_str().unwrap_or_default().to_owned()))
    }

    #[test]
    fn forged_posts_are_refused_as_the_router_refuses_them() {
        let ok = post(vec![entry(1, Side::Debit, 5), entry(2, Side::Credit, 5)]);
        let with = |change: &dyn Fn(&mut PostCommand)| {
            let mut command = ok.clone();
            change(&mut command);
            Command::Post(command)
        };
        let table: Vec<(Command, Option<(&str, &str)>)> = vec![
            (Command::Post(ok.clone()), None),
            (Command::Post(post(vec![entry(1, Side::Credit, 1_000_000)])), Some(("INVALID_REQUEST", "entries"))),
            (Command::Post(post(vec![entry(1, Side::Credit, 5), entry(2, Side::Credit, 5)])), Some(("UNBALANCED", ""))),
            (
                Command::Post(post(vec![entry(1, Side::Debit, 0), entry(2, Side::Credit, 0)])),
                Some(("INVALID_REQUEST", "entries[0].amount_minor")),
            ),
            (Command::Post(post(vec![entry(1, Side::Debit, 5), entry(1, Side::Credit, 5)])), Some(("DUPLICATE_ACCOUNT", ""))),
            (with(&|c| c.idempotency_key = "k\n".into()), Some(("INVALID_REQUEST", "idempotency_key"))),
            (with(&|c| c.tx_type = "SAGA_COMPENSATION".into()), Some(("INVALID_REQUEST", "type"))),
            (with(&|c| c.actor = String::new()), Some(("INVALID_REQUEST", "actor"))),
            (with(&|c| c.reason_code = Some("r".repeat(65))), Some(("INVALID_REQUEST", "reason_code"))),
            (with(&|c| c.business_ref = Some("b\u{7}".into())), Some(("INVALID_REQUEST", "business_ref"))),
            (
                with(&|c| c.external_ref = Some(crate::command::ExternalRef { ref_type: String::new(), reference: "r".into() })),
                Some(("INVALID_REQUEST", "external_ref.type")),
            ),
            (with(&|c| c.metadata = json!([1])), Some(("INVALID_REQUEST", "metadata"))),
            (with(&|c| c.metadata = json!({"pad": "x".repeat(8_200)})), Some(("INVALID_REQUEST", "metadata"))),
        ];
        for (command, expected) in table {
            let got = refusal(&command, 0);
            assert_eq!(got.as_ref().map(|(c, f)| (*c, f.as_str())), expected, "{command:?}");
        }
    }

    #[test]
    fn forged_accounts_and_completions_are_refused() {
        let create = |code: &str, account_id: Uuid| {
            Command::CreateAccount(CreateAccountCommand {
                tenant_id: TENANT,
                account_id,
                code: code.into(),
                account_type: AccountType::Asset,
                currency: Currency::parse("IDR").unwrap(),
                allow_negative: true,
                metadata: json!({}),
            })
        };
        assert_eq!(refusal(&create("cash", crate::ids::account_id(TENANT, "cash")), 0), None);
        assert_eq!(refusal(&create("cash", Uuid::from_u128(1)), 0), Some(("INVALID_REQUEST", "account_id".into())));
        let clearing = "#clearing:0:IDR";
        assert_eq!(
            refusal(&create(clearing, crate::ids::account_id(TENANT, clearing)), 0),
            Some(("INVALID_REQUEST", "code".into()))
        );
        let complete = |completion| {
            Command::CompleteKey(CompleteKeyCommand {
                tenant_id: TENANT,
                idempotency_key: "k".into(),
                fingerprint: PRINT.into(),
                completion,
            })
        };
        let refusal_body = json!({"error": {"code": "INSUFFICIENT_FUNDS", "message": "", "details": {}}});
        assert_eq!(refusal(&complete(KeyCompletion::Rejected { status: 422, body: refusal_body.clone() }), 0), None);
        assert_eq!(refusal(&complete(KeyCompletion::Released), 0), None);
        for (status, body) in [(200, json!({"ledger_tx_id": Uuid::nil()})), (400, refusal_body), (409, json!({"error": {}}))] {
            let forged = complete(KeyCompletion::Rejected { status, body });
            assert_eq!(refusal(&forged, 0), Some(("INVALID_REQUEST", "completion".into())), "{status}");
        }
        let claim = |fingerprint: String| {
            Command::ClaimKey(ClaimKeyCommand { tenant_id: TENANT, idempotency_key: "k".into(), fingerprint, target_shard: 1 })
        };
        assert_eq!(refusal(&claim("f".repeat(64)), 0), None);
        assert_eq!(refusal(&claim(String::new()), 0), Some(("INVALID_REQUEST", "fingerprint".into())));
        assert_eq!(refusal(&claim("f".repeat(129)), 0), Some(("INVALID_REQUEST", "fingerprint".into())));
    }

    #[test]
    fn a_saga_step_is_a_part_of_a_balanced_plan_held_as_the_plan_says() {
        assert_eq!(refusal(&forward(0, true, balanced_plan()), 0), None);
        assert_eq!(refusal(&forward(1, false, balanced_plan()), 1), None);
        // the same step handed to another shard than the plan's
        assert_eq!(refusal(&forward(1, false, balanced_plan()), 0), Some(("INVALID_REQUEST", "step".into())));
        // every leg but the last is held
        assert_eq!(refusal(&forward(0, false, balanced_plan()), 0), Some(("INVALID_REQUEST", "hold".into())));
        assert_eq!(refusal(&forward(1, true, balanced_plan()), 1), Some(("INVALID_REQUEST", "hold".into())));
        // a plan that does not balance, or has one entry, or numbers its entries wrong
        let mut unbalanced = balanced_plan();
        unbalanced[1].action = leg(2, 2, Side::Credit, 6);
        assert_eq!(refusal(&forward(0, true, unbalanced), 0), Some(("UNBALANCED", String::new())));
        let alone = vec![PlannedStep { shard: 0, action: leg(1, 1, Side::Credit, 1_000_000) }];
        assert_eq!(refusal(&forward(0, false, alone), 0), Some(("INVALID_REQUEST", "entries".into())));
        let mut misnumbered = balanced_plan();
        misnumbered[1].action = leg(7, 2, Side::Credit, 5);
        assert_eq!(refusal(&forward(0, true, misnumbered), 0), Some(("INVALID_REQUEST", "steps".into())));
        // the step's action is not the plan's
        let Command::SagaStep(mut other) = forward(0, true, balanced_plan()) else { unreachable!() };
        other.action = leg(1, 1, Side::Debit, 500);
        assert_eq!(refusal(&Command::SagaStep(other), 0), Some(("INVALID_REQUEST", "step".into())));
        // an undo reads the leg it undoes from the journal: no plan needed
        let Command::SagaStep(mut undo) = forward(0, true, balanced_plan()) else { unreachable!() };
        (undo.phase, undo.plan) = (StepPhase::Undo, Vec::new());
        assert_eq!(refusal(&Command::SagaStep(undo), 0), None);
    }

    #[test]
    fn a_saga_opens_as_a_draft_whose_plan_balances() {
        assert_eq!(refusal(&begin(balanced_plan(), 2), 0), None);
        let mut credits = balanced_plan();
        credits[0].action = leg(1, 1, Side::Credit, 5);
        assert_eq!(refusal(&begin(credits, 2), 0), Some(("UNBALANCED", String::new())));
        assert_eq!(refusal(&begin(balanced_plan(), 3), 0), Some(("INVALID_REQUEST", "steps".into())));
        let Command::BeginSaga(mut done) = begin(balanced_plan(), 2) else { unreachable!() };
        done.record.state = SagaState::Posted;
        assert_eq!(refusal(&Command::BeginSaga(done), 0), Some(("INVALID_REQUEST", "record".into())));
        let Command::BeginSaga(mut reserved) = begin(balanced_plan(), 2) else { unreachable!() };
        reserved.record.header.tx_type = TX_TYPE_REVERSAL.into();
        assert_eq!(refusal(&Command::BeginSaga(reserved), 0), Some(("INVALID_REQUEST", "type".into())));
    }
}
