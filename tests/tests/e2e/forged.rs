//! Commands and reads sent straight to a shard's internal subject, as anyone who can reach
//! NATS could send them: the shard writer re-checks every invariant whoever sent the
//! command, refuses with the code the router would have given, and writes nothing; reads
//! answer only for the tenant they name.

use ledger_core::command::{
    BeginSagaCommand, Command, CompleteKeyCommand, CreateAccountCommand, EntryCommand, KeyCompletion, PostCommand,
    SagaStepCommand,
};
use ledger_core::currency::Currency;
use ledger_core::ids::{IdSource, account_id};
use ledger_core::money::{AccountType, Side};
use ledger_core::saga::{
    LegEntry, LegHeader, PlannedStep, SagaKind, SagaRecord, SagaStep, StepAction, StepPhase, clearing_account_id,
};
use ledger_protocol::internal::{ShardReply, ShardRequest, StatementQuery, TransactionLookup};
use ledger_tests::Cluster;
use serde_json::{Value, json};
use uuid::Uuid;

const FINGERPRINT: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn entry(account_id: Uuid, side: Side, amount_minor: i64, currency: &str) -> EntryCommand {
    EntryCommand { account_id, side, amount_minor, currency: Currency::parse(currency).unwrap() }
}

fn post(tenant_id: Uuid, key: &str, entries: Vec<EntryCommand>) -> PostCommand {
    PostCommand {
        tenant_id,
        idempotency_key: key.into(),
        fingerprint: FINGERPRINT.into(),
        tx_type: "TRANSFER".into(),
        entries,
        external_ref: None,
        business_ref: None,
        occurred_at: None,
        actor: "forger".into(),
        reason_code: None,
        metadata: json!({}),
        external_ref_held_by: None,
    }
}

fn header() -> LegHeader {
    LegHeader {
        tx_type: "TRANSFER".into(),
        actor: "forger".into(),
        reason_code: None,
        business_ref: None,
        external_ref: None,
        occurred_at: None,
        metadata: json!({}),
        entry_count: 1,
    }
}

fn step(tenant_id: Uuid, step: usize, hold: bool, action: StepAction, plan: Vec<PlannedStep>) -> Command {
    let saga_id = ledger_core::ids::RandomIds::default().saga_id(chrono::Utc::now(), 1);
    let mut header = header();
    header.entry_count = plan
        .iter()
        .map(|s| match &s.action {
            StepAction::Post { entries } => entries.len(),
            _ => 0,
        })
        .sum();
    Command::SagaStep(Box::new(SagaStepCommand {
        tenant_id,
        saga_id,
        step,
        phase: StepPhase::Forward,
        hold,
        action,
        header,
        plan,
    }))
}

fn reply_code(reply: &ShardReply) -> (u16, Value) {
    let body = reply.body_value();
    (reply.status(), body["error"].clone())
}

#[tokio::test]
async fn forged_commands_sent_straight_to_a_shard_are_refused_and_write_nothing() {
    let cluster = Cluster::start(2).await;
    let tenant = cluster.tenant;
    let [cash, alice]: [String; 2] = cluster.codes_on(0, "here", 2).try_into().unwrap();
    let bob = cluster.codes_on(1, "there", 1).remove(0);
    let usd = cluster.codes_on(0, "usd", 2);
    cluster.create_account(&cash, "ASSET", "IDR", true).await;
    cluster.create_account(&alice, "LIABILITY", "IDR", false).await;
    cluster.create_account(&bob, "LIABILITY", "IDR", false).await;
    cluster.create_account(&usd[0], "ASSET", "USD", true).await;
    cluster.create_account(&usd[1], "LIABILITY", "USD", false).await;
    cluster.transfer("fund", &cash, &alice, 1_000, "IDR").await.ok();
    // across the two shards: a saga, and the clearing accounts it posts through
    cluster.transfer("across", &alice, &bob, 100, "IDR").await.ok();
    let (cash, alice, bob) = (account_id(tenant, &cash), account_id(tenant, &alice), account_id(tenant, &bob));
    let (usd_cash, usd_wallet) = (account_id(tenant, &usd[0]), account_id(tenant, &usd[1]));
    let clearing = clearing_account_id(tenant, 0, Currency::parse("IDR").unwrap());
    let before = cluster.footprint().await;

    let one_sided = post(tenant, "one-sided", vec![entry(alice, Side::Credit, 1_000_000, "IDR")]);
    let mut reserved = post(tenant, "reserved", vec![entry(cash, Side::Debit, 5, "IDR"), entry(alice, Side::Credit, 5, "IDR")]);
    reserved.tx_type = "REVERSAL".into();
    let mut fat = post(tenant, "fat", vec![entry(cash, Side::Debit, 5, "IDR"), entry(alice, Side::Credit, 5, "IDR")]);
    fat.metadata = json!({"pad": "x".repeat(9_000)});
    let mut long_actor = post(tenant, "actor", vec![entry(cash, Side::Debit, 5, "IDR"), entry(alice, Side::Credit, 5, "IDR")]);
    long_actor.actor = "a".repeat(101);
    // a leg that credits alice 1,000,000 through the clearing account: with its clearing
    // entry it balances on its shard, but the saga it claims to be part of does not (the
    // other leg credits too), so the clearing account would hold a debt nobody owes
    let lonely = StepAction::Post { entries: vec![LegEntry { seq: 1, entry: entry(alice, Side::Credit, 1_000_000, "IDR") }] };
    let also_credit = StepAction::Post { entries: vec![LegEntry { seq: 2, entry: entry(bob, Side::Credit, 1_000_000, "IDR") }] };
    let lonely_plan =
        vec![PlannedStep { shard: 0, action: lonely.clone() }, PlannedStep { shard: 1, action: also_credit.clone() }];
    let balanced_plan = vec![
        PlannedStep { shard: 0, action: lonely.clone() },
        PlannedStep {
            shard: 1,
            action: StepAction::Post { entries: vec![LegEntry { seq: 2, entry: entry(bob, Side::Debit, 1_000_000, "IDR") }] },
        },
    ];
    let mut unbalanced_saga = SagaRecord::draft(
        tenant,
        "saga",
        FINGERPRINT,
        SagaKind::Post,
        header(),
        vec![SagaStep::new(0, lonely.clone()), SagaStep::new(1, also_credit)],
        chrono::Utc::now(),
    );
    unbalanced_saga.header.entry_count = 2;

    let cases: Vec<(&str, Command, u16, &str, Option<&str>)> = vec![
        ("a one-sided post", Command::Post(one_sided), 400, "INVALID_REQUEST", Some("entries")),
        (
            "two credits",
            Command::Post(post(
                tenant,
                "credits",
                vec![entry(cash, Side::Credit, 5, "IDR"), entry(alice, Side::Credit, 5, "IDR")],
            )),
            400,
            "UNBALANCED",
            None,
        ),
        (
            "IDR balanced, USD not",
            Command::Post(post(
                tenant,
                "two-currencies",
                vec![
                    entry(cash, Side::Debit, 5, "IDR"),
                    entry(alice, Side::Credit, 5, "IDR"),
                    entry(usd_cash, Side::Debit, 7, "USD"),
                    entry(usd_wallet, Side::Credit, 9, "USD"),
                ],
            )),
            400,
            "UNBALANCED",
            None,
        ),
        (
            "alice paying the clearing account",
            Command::Post(post(
                tenant,
                "clearing",
                vec![entry(alice, Side::Debit, 50, "IDR"), entry(clearing, Side::Credit, 50, "IDR")],
            )),
            403,
            "FORBIDDEN",
            None,
        ),
        (
            "into alice from the clearing account",
            Command::Post(post(
                tenant,
                "clearing-2",
                vec![entry(clearing, Side::Debit, 50, "IDR"), entry(alice, Side::Credit, 50, "IDR")],
            )),
            403,
            "FORBIDDEN",
            None,
        ),
        (
            "zero amounts",
            Command::Post(post(tenant, "zero", vec![entry(cash, Side::Debit, 0, "IDR"), entry(alice, Side::Credit, 0, "IDR")])),
            400,
            "INVALID_REQUEST",
            Some("entries[0].amount_minor"),
        ),
        (
            "negative amounts",
            Command::Post(post(
                tenant,
                "negative",
                vec![entry(cash, Side::Credit, -5, "IDR"), entry(alice, Side::Debit, -5, "IDR")],
            )),
            400,
            "INVALID_REQUEST",
            Some("entries[0].amount_minor"),
        ),
        ("a type the ledger reserves", Command::Post(reserved), 400, "INVALID_REQUEST", Some("type")),
        ("metadata over 8 KiB", Command::Post(fat), 400, "INVALID_REQUEST", Some("metadata")),
        ("an actor too long", Command::Post(long_actor), 400, "INVALID_REQUEST", Some("actor")),
        (
            "an account under an id not derived from its code",
            Command::CreateAccount(CreateAccountCommand {
                tenant_id: tenant,
                account_id: Uuid::new_v4(),
                code: "free-money".into(),
                account_type: AccountType::Liability,
                currency: Currency::parse("IDR").unwrap(),
                allow_negative: true,
                metadata: json!({}),
            }),
            400,
            "INVALID_REQUEST",
            Some("account_id"),
        ),
        (
            "a clearing account's code",
            Command::CreateAccount(CreateAccountCommand {
                tenant_id: tenant,
                account_id: account_id(tenant, "#clearing:0:IDR"),
                code: "#clearing:0:IDR".into(),
                account_type: AccountType::Asset,
                currency: Currency::parse("IDR").unwrap(),
                allow_negative: true,
                metadata: json!({}),
            }),
            400,
            "INVALID_REQUEST",
            Some("code"),
        ),
        ("a saga leg whose saga does not balance", step(tenant, 0, true, lonely.clone(), lonely_plan), 400, "UNBALANCED", None),
        (
            "a saga leg sent to the wrong shard",
            step(tenant, 1, false, balanced_plan[1].action.clone(), balanced_plan.clone()),
            400,
            "INVALID_REQUEST",
            Some("step"),
        ),
        (
            "a saga's first leg posted unheld",
            step(tenant, 0, false, lonely.clone(), balanced_plan.clone()),
            400,
            "INVALID_REQUEST",
            Some("hold"),
        ),
        (
            "a saga whose plan does not balance",
            Command::BeginSaga(Box::new(BeginSagaCommand { record: unbalanced_saga, run_first_step: true })),
            400,
            "UNBALANCED",
            None,
        ),
        (
            "a key completed with a reply that is not a refusal",
            Command::CompleteKey(CompleteKeyCommand {
                tenant_id: tenant,
                idempotency_key: "fund".into(),
                fingerprint: FINGERPRINT.into(),
                completion: KeyCompletion::Rejected { status: 200, body: json!({"ledger_tx_id": Uuid::new_v4()}) },
            }),
            400,
            "INVALID_REQUEST",
            Some("completion"),
        ),
    ];
    for (what, command, status, code, field) in cases {
        let reply = cluster.to_shard(0, &ShardRequest::Write { command: Box::new(command) }).await;
        let (got_status, error) = reply_code(&reply);
        assert_eq!((got_status, error["code"].as_str()), (status, Some(code)), "{what}: {}", reply.client_body());
        if let Some(field) = field {
            assert_eq!(error["details"]["field"], field, "{what}: {error}");
        }
    }
    assert_eq!(cluster.footprint().await, before, "no forged command wrote anything");
    let audit = cluster.audit().await;
    assert_eq!(audit["ok"], true, "{audit:#}");

    // in one message with a legitimate post: the forged one is refused alone
    let legit = post(tenant, "legit", vec![entry(cash, Side::Debit, 10, "IDR"), entry(alice, Side::Credit, 10, "IDR")]);
    let forged = post(tenant, "forged", vec![entry(alice, Side::Credit, 10, "IDR")]);
    let batch =
        cluster.to_shard(0, &ShardRequest::WriteBatch { commands: vec![Command::Post(forged), Command::Post(legit)] }).await;
    let ShardReply::Batch(replies) = batch else { panic!("a batch answers a batch: {batch:?}") };
    assert_eq!(reply_code(&replies[0]).1["code"], "INVALID_REQUEST");
    assert_eq!(replies[1].status(), 200, "{}", replies[1].client_body());

    // metadata PostgreSQL cannot store fails neither its batch nor its neighbours
    let mut unstorable = post(tenant, "nul", vec![entry(cash, Side::Debit, 10, "IDR"), entry(alice, Side::Credit, 10, "IDR")]);
    unstorable.metadata = json!({"note": "a\u{0}b"});
    let neighbour = post(tenant, "neighbour", vec![entry(cash, Side::Debit, 10, "IDR"), entry(alice, Side::Credit, 10, "IDR")]);
    let batch = cluster
        .to_shard(0, &ShardRequest::WriteBatch { commands: vec![Command::Post(unstorable), Command::Post(neighbour)] })
        .await;
    let ShardReply::Batch(replies) = batch else { panic!("a batch answers a batch: {batch:?}") };
    assert_eq!(reply_code(&replies[0]).1["details"]["field"], "metadata.note");
    assert_eq!(replies[1].status(), 200, "{}", replies[1].client_body());
    let audit = cluster.audit().await;
    assert_eq!(audit["ok"], true, "{audit:#}");
    cluster.finish().await;
}

#[tokio::test]
async fn internal_reads_answer_only_for_the_tenant_they_name() {
    let cluster = Cluster::start(2).await;
    let tenant = cluster.tenant;
    let [cash, alice]: [String; 2] = cluster.codes_on(0, "here", 2).try_into().unwrap();
    let bob = cluster.codes_on(1, "there", 1).remove(0);
    cluster.create_account(&cash, "ASSET", "IDR", true).await;
    cluster.create_account(&alice, "LIABILITY", "IDR", false).await;
    cluster.create_account(&bob, "LIABILITY", "IDR", false).await;
    let funded = cluster.transfer("fund", &cash, &alice, 1_000, "IDR").await.ok();
    let across = cluster.transfer("across", &alice, &bob, 100, "IDR").await.ok();
    let fund_tx: Uuid = funded["ledger_tx_id"].as_str().unwrap().parse().unwrap();
    let saga_id: Uuid = across["ledger_tx_id"].as_str().unwrap().parse().unwrap();
    let saga_home = ledger_core::ids::shard_of_ledger_id(saga_id).unwrap();
    let alice = account_id(tenant, &alice);
    let key_home = cluster.config.ring().shard_for_key(tenant, "fund");
    let statement = |tenant_id| ShardRequest::Statement {
        tenant_id,
        query: StatementQuery { account_id: alice, from: None, to: None, limit: 10, after_commit_seq: None },
    };
    let reads = |tenant_id: Uuid| {
        vec![
            (0, ShardRequest::GetAccount { tenant_id, account_id: alice }, "ACCOUNT_NOT_FOUND"),
            (0, statement(tenant_id), "ACCOUNT_NOT_FOUND"),
            (0, ShardRequest::GetTransaction { tenant_id, by: TransactionLookup::Id(fund_tx) }, "TRANSACTION_NOT_FOUND"),
            (
                key_home,
                ShardRequest::GetTransaction { tenant_id, by: TransactionLookup::IdempotencyKey("fund".into()) },
                "TRANSACTION_NOT_FOUND",
            ),
            (0, ShardRequest::PostReply { tenant_id, ledger_tx_id: fund_tx }, "INTERNAL"),
            (saga_home, ShardRequest::PostReply { tenant_id, ledger_tx_id: saga_id }, "INTERNAL"),
            (0, ShardRequest::GetLeg { tenant_id, ledger_tx_id: saga_id }, "TRANSACTION_NOT_FOUND"),
            (saga_home, ShardRequest::GetSaga { tenant_id, saga_id }, "TRANSACTION_NOT_FOUND"),
        ]
    };
    // the owner gets its answers
    for (shard, request, _) in reads(tenant) {
        let reply = cluster.to_shard(shard, &request).await;
        assert_eq!(reply.status(), 200, "{request:?}: {}", reply.client_body());
    }
    // another tenant asking by the same ids learns nothing of them
    let stranger = Uuid::new_v4();
    for (shard, request, code) in reads(stranger) {
        let reply = cluster.to_shard(shard, &request).await;
        let (status, error) = reply_code(&reply);
        assert_eq!(error["code"], code, "{request:?}: {}", reply.client_body());
        assert_ne!(status, 200);
        // (a refusal may name the id it was asked about, never what the shard holds)
        for secret in [fund_tx.to_string(), saga_id.to_string(), "balance".to_owned(), "entries".to_owned()] {
            assert!(!reply.client_body().contains(&secret), "{request:?} tells {secret}: {}", reply.client_body());
        }
    }
    let facts = cluster.to_shard(0, &ShardRequest::AccountFacts { tenant_id: stranger, account_ids: vec![alice] }).await;
    assert_eq!((facts.status(), facts.client_body().as_ref()), (200, "[]"));
    cluster.finish().await;
}
