//! The decisions a coordinator makes about a cross-shard request before its saga opens,
//! and about the saga's external reference when it ends. Pure: the accounts' facts come
//! in as a function, read by the caller from their shards.

use super::*;
use crate::batch::TX_TYPE_REVERSAL;
use crate::command::{PostCommand, RefCompletion, ReverseCommand};
use crate::error_code::ErrorCode;
use crate::rejection::Rejection;

/// What a saga needs to know of an account: that it exists, with this type and currency
/// (both fixed at creation, so a cached fact is never stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownAccount<'a> {
    pub account_type: AccountType,
    pub currency: &'a str,
}

fn is_outgoing<'a>(known: &impl Fn(Uuid) -> Option<KnownAccount<'a>>, entry: &EntryCommand) -> bool {
    known(entry.account_id).is_some_and(|a| entry.side != a.account_type.normal_side())
}

/// The saga of a post whose accounts live on several shards, or the refusal that comes
/// before anything is written (and uses no key): an unknown account, a currency that is
/// not the account's, a clearing account named by a client.
pub fn plan_post<'a>(
    command: &PostCommand,
    known: impl Fn(Uuid) -> Option<KnownAccount<'a>>,
    shard_of: impl Fn(Uuid) -> u16,
    now: DateTime<Utc>,
) -> Result<SagaRecord, Rejection> {
    for entry in &command.entries {
        let Some(account) = known(entry.account_id) else {
            return Err(Rejection::AccountNotFound { account_id: Some(entry.account_id) });
        };
        if account.currency != entry.currency.as_str() {
            return Err(Rejection::CurrencyMismatch {
                account_id: entry.account_id,
                account_currency: account.currency.to_owned(),
                entry_currency: entry.currency.to_string(),
            });
        }
        if entry.account_id == clearing_account_id(command.tenant_id, shard_of(entry.account_id), entry.currency) {
            return Err(Rejection::clearing_account(entry.account_id));
        }
    }
    let legs = plan_legs(&command.entries, &shard_of, |e| is_outgoing(&known, e));
    let steps = legs.into_iter().map(|(shard, entries)| SagaStep::new(shard, StepAction::Post { entries })).collect();
    let header = LegHeader {
        tx_type: command.tx_type.clone(),
        actor: command.actor.clone(),
        reason_code: command.reason_code.clone(),
        business_ref: command.business_ref.clone(),
        external_ref: command.external_ref.clone(),
        occurred_at: command.occurred_at,
        metadata: command.metadata.clone(),
        entry_count: command.entries.len(),
    };
    Ok(SagaRecord::draft(command.tenant_id, &command.idempotency_key, &command.fingerprint, SagaKind::Post, header, steps, now))
}

fn leg_entries(step: &SagaStep) -> &[LegEntry] {
    match &step.action {
        StepAction::Post { entries } => entries,
        _ => &[],
    }
}

/// The accounts a reversal of `original` touches: every client entry of its legs.
pub fn reversed_accounts(original: &SagaRecord) -> Vec<Uuid> {
    original.leg_steps().flat_map(|(_, step)| leg_entries(step).iter().map(|e| e.entry.account_id)).collect()
}

/// Whether a cross-shard transaction can be reversed at all: it posted, and it is not
/// itself a reversal.
pub fn reversible(original: &SagaRecord) -> Result<(), Rejection> {
    if original.state != SagaState::Posted {
        return Err(Rejection::TransactionNotFound);
    }
    if matches!(original.kind, SagaKind::Reverse { .. }) {
        return Err(Rejection::invalid(
            "ledger_tx_id",
            "a reversal cannot itself be reversed; post a new transaction to correct it",
        ));
    }
    Ok(())
}

/// The saga that reverses a posted cross-shard transaction: it first claims the original
/// on the shard holding its log (a transaction is reversed at most once), then mirrors
/// each leg on its shard, the mirrors that take money out first.
pub fn plan_reverse<'a>(
    command: &ReverseCommand,
    original: &SagaRecord,
    known: impl Fn(Uuid) -> Option<KnownAccount<'a>>,
    now: DateTime<Utc>,
) -> Result<SagaRecord, Rejection> {
    reversible(original)?;
    let original_home = crate::ids::shard_of_ledger_id(original.saga_id).expect("saga ids carry their shard");
    // a mirrored leg takes money out where the original brought it in
    let mut mirrors: Vec<(u16, bool)> = original
        .leg_steps()
        .map(|(_, step)| {
            let outgoing = leg_entries(step)
                .iter()
                .any(|e| is_outgoing(&known, &EntryCommand { side: e.entry.side.opposite(), ..e.entry.clone() }));
            (step.shard, outgoing)
        })
        .collect();
    mirrors.sort_by_key(|(_, outgoing)| !outgoing);
    let mut steps = vec![SagaStep::new(original_home, StepAction::ClaimReversal { of: original.saga_id })];
    steps.extend(mirrors.into_iter().map(|(shard, _)| SagaStep::new(shard, StepAction::Mirror { of: original.saga_id })));
    let header = LegHeader {
        tx_type: TX_TYPE_REVERSAL.to_owned(),
        actor: command.actor.clone(),
        reason_code: Some(command.reason_code.clone()),
        business_ref: original.header.business_ref.clone(),
        external_ref: None,
        occurred_at: None,
        metadata: Value::Object(Default::default()),
        entry_count: original.header.entry_count,
    };
    let kind = SagaKind::Reverse { of: original.saga_id };
    Ok(SagaRecord::draft(command.tenant_id, &command.idempotency_key, &command.fingerprint, kind, header, steps, now))
}

impl SagaRecord {
    /// What the home of the saga's external reference must learn when the saga ends:
    /// bound to the saga if it posted, released if it turned back; nothing when the
    /// reference itself was why it turned back (another transaction holds it, or is
    /// still being decided with it): then this saga never held it.
    pub fn reference_completion(&self, posted: bool) -> Option<(ExternalRef, RefCompletion)> {
        let external_ref = self.header.external_ref.clone()?;
        let refused_for_the_reference = self.failure.as_ref().is_some_and(|f| {
            f.step.is_none() && matches!(f.code(), Some(ErrorCode::DuplicateExternalRef | ErrorCode::InProgress))
        });
        if refused_for_the_reference {
            return None;
        }
        let completion = if posted { RefCompletion::Bound { ledger_tx_id: self.saga_id } } else { RefCompletion::Released };
        Some((external_ref, completion))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdSource;
    use crate::money::AccountType::{Asset, Liability};

    const TENANT: Uuid = Uuid::from_u128(7);

    fn idr() -> Currency {
        Currency::parse("IDR").unwrap()
    }

    fn entry(account: u128, side: Side, amount: i64) -> EntryCommand {
        EntryCommand { account_id: Uuid::from_u128(account), side, amount_minor: amount, currency: idr() }
    }

    fn post(entries: Vec<EntryCommand>) -> PostCommand {
        PostCommand {
            tenant_id: TENANT,
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            tx_type: "TRANSFER".into(),
            entries,
            external_ref: Some(ExternalRef { ref_type: "psp".into(), reference: "r".into() }),
            business_ref: None,
            occurred_at: None,
            actor: "a".into(),
            reason_code: None,
            metadata: Value::Null,
            external_ref_held_by: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    /// Account 1 is an asset, 2 and 3 are liabilities, all in IDR; account n is on shard
    /// n % 3.
    fn known(id: Uuid) -> Option<KnownAccount<'static>> {
        match id.as_u128() {
            1 => Some(KnownAccount { account_type: Asset, currency: "IDR" }),
            2 | 3 => Some(KnownAccount { account_type: Liability, currency: "IDR" }),
            _ => None,
        }
    }

    fn shard_of(id: Uuid) -> u16 {
        (id.as_u128() % 3) as u16
    }

    #[test]
    fn a_cross_shard_post_is_refused_before_anything_is_written_for_what_its_facts_show() {
        let unknown = post(vec![entry(1, Side::Debit, 5), entry(9, Side::Credit, 5)]);
        let refusal = plan_post(&unknown, known, shard_of, now()).unwrap_err();
        assert_eq!(refusal, Rejection::AccountNotFound { account_id: Some(Uuid::from_u128(9)) });
        let in_usd = |id| known(id).map(|k| KnownAccount { currency: "USD", ..k });
        let mismatch = plan_post(&post(vec![entry(1, Side::Debit, 5), entry(2, Side::Credit, 5)]), in_usd, shard_of, now());
        assert_eq!(mismatch.unwrap_err().code(), "CURRENCY_MISMATCH");
        // a client naming the ledger's own clearing account on shard 0
        let clearing = clearing_account_id(TENANT, 0, idr());
        let forged = post(vec![EntryCommand { account_id: clearing, ..entry(0, Side::Debit, 5) }, entry(2, Side::Credit, 5)]);
        let with_clearing = |id: Uuid| if id == clearing { known(Uuid::from_u128(1)) } else { known(id) };
        let placed = |id: Uuid| if id == clearing { 0 } else { shard_of(id) };
        assert_eq!(plan_post(&forged, with_clearing, placed, now()).unwrap_err().code(), "FORBIDDEN");
    }

    #[test]
    fn a_cross_shard_post_takes_money_out_first_and_holds_every_leg_but_the_last() {
        // the bank (1, an asset) debited: money in; 3 (a liability) debited: money out;
        // 2 (a liability) credited: money in
        let command = post(vec![entry(1, Side::Debit, 10), entry(3, Side::Debit, 5), entry(2, Side::Credit, 15)]);
        let draft = plan_post(&command, known, shard_of, now()).unwrap();
        let shards: Vec<u16> = draft.steps.iter().map(|s| s.shard).collect();
        assert_eq!(shards, [0, 1, 2], "the leg taking money out of 3 first, then the others in request order");
        assert_eq!((draft.state, draft.header.entry_count), (SagaState::Running, 3));
        assert!(draft.holds(0) && draft.holds(1) && !draft.holds(2));
    }

    #[test]
    fn a_reversal_claims_the_original_first_and_refuses_what_cannot_be_reversed() {
        let mut original =
            plan_post(&post(vec![entry(3, Side::Debit, 5), entry(2, Side::Credit, 5)]), known, shard_of, now()).unwrap();
        original.saga_id = crate::ids::SequentialIds(1).saga_id(now(), 1);
        let reverse = ReverseCommand {
            tenant_id: TENANT,
            idempotency_key: "r".into(),
            fingerprint: "f".into(),
            ledger_tx_id: original.saga_id,
            actor: "ops".into(),
            reason_code: "DUPLICATE".into(),
        };
        assert_eq!(plan_reverse(&reverse, &original, known, now()).unwrap_err(), Rejection::TransactionNotFound);
        original.state = SagaState::Posted;
        let reversal = plan_reverse(&reverse, &original, known, now()).unwrap();
        let actions: Vec<&StepAction> = reversal.steps.iter().map(|s| &s.action).collect();
        assert_eq!(actions[0], &StepAction::ClaimReversal { of: original.saga_id });
        // the mirror of the leg that credited 2 takes money out of 2: it goes first
        assert_eq!(reversal.steps[1].shard, 2);
        assert_eq!(reversal.kind, SagaKind::Reverse { of: original.saga_id });
        assert_eq!(reversed_accounts(&original), [Uuid::from_u128(3), Uuid::from_u128(2)]);
        let mut reversal_of_a_reversal = original.clone();
        reversal_of_a_reversal.kind = SagaKind::Reverse { of: Uuid::nil() };
        assert_eq!(plan_reverse(&reverse, &reversal_of_a_reversal, known, now()).unwrap_err().code(), "INVALID_REQUEST");
    }

    #[test]
    fn the_reference_is_bound_or_released_unless_it_was_why_the_saga_turned_back() {
        let mut draft =
            plan_post(&post(vec![entry(3, Side::Debit, 5), entry(2, Side::Credit, 5)]), known, shard_of, now()).unwrap();
        draft.saga_id = Uuid::from_u128(0xa);
        let reference = ExternalRef { ref_type: "psp".into(), reference: "r".into() };
        assert_eq!(
            draft.reference_completion(true),
            Some((reference.clone(), RefCompletion::Bound { ledger_tx_id: draft.saga_id }))
        );
        let mut refused_at_a_leg = draft.clone();
        refused_at_a_leg.record_step(0, StepResult::Refused { status: 422, body: Value::Null }, now());
        assert_eq!(refused_at_a_leg.reference_completion(false), Some((reference, RefCompletion::Released)));
        for taken in [Rejection::DuplicateExternalRef { ledger_tx_id: Uuid::nil() }, Rejection::InProgress] {
            let mut refused_for_the_reference = draft.clone();
            refused_for_the_reference.refuse(taken.status(), taken.to_body(), now());
            assert_eq!(refused_for_the_reference.reference_completion(false), None, "{taken:?}");
        }
        let mut without = draft;
        without.header.external_ref = None;
        assert_eq!(without.reference_completion(true), None);
    }
}
