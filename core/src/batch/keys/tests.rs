use crate::batch::testkit::*;
use crate::batch::*;

#[test]
fn key_claims_on_the_home_shard() {
    let mut shard = setup();
    let tx = Uuid::from_u128(77);
    let outcomes = shard.run(&[
        claim("k", "fp1"),
        claim("k", "fp1"),
        claim("k", "fp2"),
        complete("k", "fp2", KeyCompletion::Posted { ledger_tx_id: tx }),
        complete("k", "fp1", KeyCompletion::Posted { ledger_tx_id: tx }),
        claim("k", "fp1"),
        complete("k", "fp1", KeyCompletion::Released),
        claim("gone", "a"),
        complete("gone", "a", KeyCompletion::Released),
        claim("gone", "b"),
        claim("no", "x"),
        complete("no", "x", KeyCompletion::Rejected { status: 422, body: json!({"error": {"code": "INSUFFICIENT_FUNDS"}}) }),
        claim("no", "x"),
    ]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(
        codes,
        [
            "KEY_CLAIMED",
            "KEY_CLAIMED",
            "IDEMPOTENCY_CONFLICT",
            "COMPLETED",
            "COMPLETED",
            "REPLAY",
            "COMPLETED",
            "KEY_CLAIMED",
            "COMPLETED",
            "KEY_CLAIMED",
            "KEY_CLAIMED",
            "COMPLETED",
            "REPLAY_REJECTION",
        ]
    );
    assert_eq!(shard.snapshot.keys[&(TENANT, "k".to_owned())].outcome, KeyOutcome::Posted { ledger_tx_id: tx });
    let gone = &shard.snapshot.keys[&(TENANT, "gone".to_owned())];
    assert_eq!((gone.fingerprint.as_str(), &gone.outcome), ("b", &KeyOutcome::Processing { target_shard: 2 }));
}

#[test]
fn a_batch_writes_one_row_per_key_the_last_decision() {
    let mut shard = setup();
    shard.clock += 1;
    let input = BatchInput { shard_id: 3, now: at(shard.clock), next_commit_seq: 1 };
    let plan = plan_batch(
        input,
        &mut shard.snapshot,
        &[claim("k", "f"), complete("k", "f", KeyCompletion::Released), claim("k", "g")],
        &mut shard.ids,
    );
    assert_eq!(plan.writes.keys.len(), 1);
    assert_eq!((plan.writes.keys[0].fingerprint.as_str(), plan.writes.keys[0].status), ("g", KeyStatus::Processing));
}

#[test]
fn a_claimed_key_posts_for_its_own_request_only() {
    let mut shard = setup();
    let payment = transfer("pay", "credit", "alice", 10);
    let other = transfer("pay", "credit", "alice", 11);
    let fingerprint = fingerprint_of(&payment);
    let outcomes = shard.run(&[claim("pay", &fingerprint), other.clone(), payment.clone(), payment.clone()]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(codes, ["KEY_CLAIMED", "IDEMPOTENCY_CONFLICT", "POSTED", "REPLAY"]);
}

#[test]
fn an_abandoned_request_never_posts_and_a_decided_one_keeps_its_outcome() {
    let mut shard = setup();
    let abandon = |key: &str, fingerprint: &str| {
        Command::AbandonKey(AbandonKeyCommand { tenant_id: TENANT, idempotency_key: key.into(), fingerprint: fingerprint.into() })
    };
    let late = transfer("late", "credit", "alice", 10);
    let posted = transfer("posted", "credit", "alice", 10);
    let outcomes = shard.run(&[
        posted.clone(),
        abandon("late", &fingerprint_of(&late)),
        late.clone(),
        abandon("posted", &fingerprint_of(&posted)),
        claim("claimed", "f"),
        abandon("claimed", "f"),
    ]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(codes, ["POSTED", "REQUEST_ABANDONED", "REPLAY_REJECTION", "REPLAY", "KEY_CLAIMED", "IN_PROGRESS"]);
    let Outcome::ReplayRejection { body, .. } = &outcomes[2] else { unreachable!() };
    assert_eq!(body["error"]["code"], "REQUEST_ABANDONED", "the late copy is refused, not posted");
    assert_eq!(shard.balance("alice"), 10);
    assert_eq!(code_of(&shard.run(&[abandon("late", &fingerprint_of(&late))])[0]), "REPLAY_REJECTION", "settled once");
}

#[test]
fn external_references_claimed_on_their_home_shard() {
    let mut shard = setup();
    let tx = Uuid::from_u128(5);
    let outcomes = shard.run(&[
        claim_ref("ch_1", "k1"),
        claim_ref("ch_1", "k1"),
        claim_ref("ch_1", "k2"),
        complete_ref("ch_1", "k2", RefCompletion::Bound { ledger_tx_id: Uuid::from_u128(9) }),
        complete_ref("ch_1", "k1", RefCompletion::Bound { ledger_tx_id: tx }),
        claim_ref("ch_1", "k2"),
        claim_ref("ch_2", "k3"),
        complete_ref("ch_2", "k3", RefCompletion::Released),
        claim_ref("ch_2", "k4"),
    ]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(
        codes,
        [
            "REF_CLAIMED",
            "REF_CLAIMED",
            "REF_HELD_PENDING",
            "COMPLETED",
            "COMPLETED",
            "REF_HELD_POSTED",
            "REF_CLAIMED",
            "COMPLETED",
            "REF_CLAIMED",
        ]
    );
    // a local post with a reference held at home: pending is IN_PROGRESS, posted is a duplicate
    let with_ref = |key: &str, reference: &str| {
        let Command::Post(mut p) = transfer(key, "credit", "alice", 1) else { unreachable!() };
        p.external_ref = Some(external(reference));
        Command::Post(p)
    };
    let held_elsewhere = {
        let Command::Post(mut p) = transfer("k7", "credit", "alice", 1) else { unreachable!() };
        p.external_ref_held_by = Some(tx);
        Command::Post(p)
    };
    let outcomes = shard.run(&[with_ref("k5", "ch_2"), with_ref("k6", "ch_1"), held_elsewhere, with_ref("k4", "ch_2")]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(codes, ["IN_PROGRESS", "DUPLICATE_EXTERNAL_REF", "DUPLICATE_EXTERNAL_REF", "POSTED"]);
}
