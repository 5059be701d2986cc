use crate::batch::testkit::*;
use crate::batch::*;

#[test]
fn a_batch_posts_exactly_the_commands_that_pass() {
    let mut shard = setup();
    let outcomes = shard.run(&[
        transfer("ok-1", "credit", "alice", 100),
        transfer("short", "alice", "bob", 101),
        transfer("ok-2", "alice", "bob", 60),
        transfer("ghost", "alice", "nobody", 1),
        post("mismatch", &[("alice", Side::Debit, 1), ("usd", Side::Credit, 1)], "IDR"),
        transfer("ok-3", "alice", "bob", 40),
        transfer("ok-1", "credit", "alice", 100),
        transfer("ok-1", "credit", "alice", 999),
        transfer("short", "alice", "bob", 101),
        transfer("empty", "alice", "bob", 1),
    ]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(
        codes,
        [
            "POSTED",
            "INSUFFICIENT_FUNDS",
            "POSTED",
            "ACCOUNT_NOT_FOUND",
            "CURRENCY_MISMATCH",
            "POSTED",
            "REPLAY",
            "IDEMPOTENCY_CONFLICT",
            "REPLAY_REJECTION",
            "INSUFFICIENT_FUNDS",
        ]
    );
    assert_eq!(shard.transactions.len(), 3);
    assert_eq!(shard.balance("alice"), 0);
    assert_eq!(shard.balance("bob"), 100);
    assert_eq!(shard.balance("credit"), -100);
    let seqs: Vec<i64> = shard.transactions.iter().map(|t| t.commit_seq).collect();
    assert_eq!(seqs, [1, 2, 3], "gap-free even with refusals in between");
}

#[test]
fn status_rules_in_precedence_order() {
    let mut shard = setup();
    shard.run(&[transfer("fund", "credit", "alice", 50)]);
    let outcomes = shard.run(&[
        status("alice", AccountStatus::Frozen),
        transfer("out", "alice", "bob", 1),
        transfer("in", "credit", "alice", 1),
        status("alice", AccountStatus::Closed),
        status("bob", AccountStatus::Closed),
        transfer("to-closed", "credit", "bob", 1),
        status("bob", AccountStatus::Active),
        status("bob", AccountStatus::Closed),
        status("ghost", AccountStatus::Frozen),
    ]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(
        codes,
        [
            "ACCOUNT",
            "ACCOUNT_FROZEN",
            "POSTED",
            "ACCOUNT_BALANCE_NONZERO",
            "ACCOUNT",
            "ACCOUNT_CLOSED",
            "ACCOUNT_CLOSED",
            "ACCOUNT",
            "ACCOUNT_NOT_FOUND",
        ]
    );
}

#[test]
fn reversal_mirrors_and_happens_once_even_within_one_batch() {
    let mut shard = setup();
    let outcomes = shard.run(&[transfer("fund", "credit", "alice", 70)]);
    let Outcome::Posted(original) = &outcomes[0] else { panic!("posted") };
    let outcomes = shard.run(&[
        status("alice", AccountStatus::Frozen),
        reverse("r1", original.ledger_tx_id),
        reverse("r2", original.ledger_tx_id),
        reverse("r1", original.ledger_tx_id),
    ]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(codes, ["ACCOUNT", "POSTED", "ALREADY_REVERSED", "REPLAY"]);
    let Outcome::Posted(reversal) = &outcomes[1] else { panic!("posted") };
    for (o, r) in original.entries.iter().zip(&reversal.entries) {
        assert_eq!((o.account_id, o.side.opposite(), o.amount_minor), (r.account_id, r.side, r.amount_minor));
    }
    assert_eq!(shard.balance("alice"), 0);
    assert_eq!(shard.balance("credit"), 0);
    let outcomes = shard.run(&[reverse("r3", reversal.ledger_tx_id), reverse("r4", Uuid::from_u128(9))]);
    let codes: Vec<_> = outcomes.iter().map(code_of).collect();
    assert_eq!(codes, ["INVALID_REQUEST", "TRANSACTION_NOT_FOUND"]);
}

#[test]
fn events_are_stored_less_their_columns_and_published_whole() {
    let mut shard = setup();
    let created = &shard.writes_of_last_run.outbox[0];
    let alice = crate::ids::account_id(TENANT, "alice");
    let cash = crate::ids::account_id(TENANT, "cash");
    assert_eq!(
        outbox_form::published_payload(created.columns(), created.payload.clone()),
        json!({
            "event_id": created.event_id, "event_type": "account.created", "tenant_id": TENANT,
            "account_id": cash, "code": "cash", "type": "ASSET", "currency": "IDR", "allow_negative": false,
            "created_at": at(1),
        })
    );
    let outcomes = shard.run(&[transfer("t", "credit", "alice", 70), status("bob", AccountStatus::Frozen)]);
    let Outcome::Posted(posted) = &outcomes[0] else { panic!("posted") };
    let tx = &shard.writes_of_last_run.transactions[0];
    let [transfer_event, frozen_event] = &shard.writes_of_last_run.outbox[..] else { panic!("two events") };
    assert_eq!(
        transfer_event.payload,
        json!({
            "type": "TRANSFER", "commit_seq": tx.commit_seq, "occurred_at": at(2), "posted_at": at(2),
            "entries": [[crate::ids::account_id(TENANT, "credit"), "DEBIT", 70, "IDR"], [alice, "CREDIT", 70, "IDR"]],
        }),
        "stored without the row's columns and null references, entries as arrays"
    );
    assert_eq!(
        outbox_form::published_payload(transfer_event.columns(), transfer_event.payload.clone()),
        json!({
            "event_id": transfer_event.event_id, "event_type": "transaction.posted", "tenant_id": TENANT,
            "ledger_tx_id": posted.ledger_tx_id, "type": "TRANSFER", "commit_seq": tx.commit_seq,
            "occurred_at": at(2), "posted_at": at(2),
            "reverses_ledger_tx_id": null, "external_ref": null, "business_ref": null,
            "entries": [
                {"account_id": crate::ids::account_id(TENANT, "credit"), "side": "DEBIT", "amount_minor": 70, "currency": "IDR"},
                {"account_id": alice, "side": "CREDIT", "amount_minor": 70, "currency": "IDR"},
            ],
        })
    );
    assert_eq!(
        outbox_form::published_payload(frozen_event.columns(), frozen_event.payload.clone()),
        json!({
            "event_id": frozen_event.event_id, "event_type": "account.status_changed", "tenant_id": TENANT,
            "account_id": crate::ids::account_id(TENANT, "bob"), "from": "ACTIVE", "to": "FROZEN", "actor": "ops",
            "reason_code": null, "changed_at": at(2),
        })
    );
    shard.run(&[reverse("r", posted.ledger_tx_id)]);
    let reversal = &shard.writes_of_last_run.outbox[0];
    let published = outbox_form::published_payload(reversal.columns(), reversal.payload.clone());
    assert_eq!(published["event_type"], "transaction.reversed");
    assert_eq!(published["reverses_ledger_tx_id"], json!(posted.ledger_tx_id));
    assert_eq!(published["entries"][0]["side"], "CREDIT");
}
