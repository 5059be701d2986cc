//! What the database itself guarantees: append-only journal, the journal's row rules, the
//! currency table, the projection that can be rebuilt from entries.

use ledger_tests::Cluster;

#[tokio::test]
async fn journal_rows_cannot_be_updated_or_deleted_by_the_service_role() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    let posted = cluster.transfer("t1", "cash", "alice", 700, "IDR").await.ok();
    let mut with_ref = ledger_tests::transfer_body("t2", "cash", "alice", 700, "IDR");
    with_ref["external_ref"] = serde_json::json!({"type": "psp", "ref": "ch_9"});
    let second = cluster.call("transactions.post", with_ref).await.ok();
    let reverse =
        serde_json::json!({"idempotency_key": "r2", "ledger_tx_id": second["ledger_tx_id"], "actor": "ops", "reason_code": "X"});
    cluster.call("transactions.reverse", reverse).await.ok();
    let freeze = serde_json::json!({"account_code": "alice", "status": "FROZEN", "actor": "ops"});
    cluster.call("accounts.set_status", freeze).await.ok();
    let mut amount = 0;
    let mut checked = std::collections::HashSet::new();
    for shard in 0..cluster.config.shards.len() {
        let db = cluster.db(shard).await;
        // the service connects as this very role (the configured database URL)
        for sql in [
            "update ledger_transaction set tx_type = 'X'",
            "delete from ledger_transaction",
            "truncate ledger_transaction",
            "update ledger_entry set amount_minor = 1",
            "delete from ledger_entry",
            "truncate ledger_entry",
            "delete from ledger_reversal",
            "update ledger_external_ref set ledger_tx_id = gen_random_uuid()",
            "delete from ledger_account_status_change",
            "truncate ledger_account_status_change",
            "truncate ledger_external_ref",
            "truncate ledger_reversal",
        ] {
            // a row trigger fires only for rows: a table with none on this shard proves nothing
            let table = sql.split_whitespace().find(|w| w.starts_with("ledger_")).expect("a ledger table");
            let count = format!("select count(*) from {table}");
            let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count)).fetch_one(&db).await.unwrap();
            if rows == 0 && !sql.starts_with("truncate") {
                continue;
            }
            checked.insert(sql);
            let error = sqlx::query(sql).execute(&db).await.expect_err(sql);
            assert!(error.to_string().contains("immutable"), "{sql}: {error}");
        }
        // also directly on a partition
        let partition: Option<String> =
            sqlx::query_scalar("select tableoid::regclass::text from ledger_entry limit 1").fetch_optional(&db).await.unwrap();
        for sql in partition.iter().flat_map(|p| [format!("delete from {p}"), format!("truncate {p}")]) {
            let error = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&db).await.expect_err(&sql);
            assert!(error.to_string().contains("immutable"), "{sql}: {error}");
        }
        // the clients' accounts only: a transfer across shards also moves clearing accounts
        let ids = [ledger_core::ids::account_id(cluster.tenant, "cash"), ledger_core::ids::account_id(cluster.tenant, "alice")];
        let on_shard: i64 =
            sqlx::query_scalar("select coalesce(sum(amount_minor), 0)::int8 from ledger_entry where account_id = any($1)")
                .bind(&ids[..])
                .fetch_one(&db)
                .await
                .unwrap();
        amount += on_shard;
        db.close().await;
    }
    assert_eq!(amount, 3 * 1400);
    // the journal's statements met rows somewhere (a cross-shard transaction keeps its
    // reference and its reversal claim in the saga log, not in these tables)
    for (table, statements) in [("ledger_transaction", 3), ("ledger_entry", 3), ("ledger_account_status_change", 2)] {
        assert_eq!(checked.iter().filter(|sql| sql.contains(table)).count(), statements, "{table}: {checked:?}");
    }
    let fetched = cluster.call("transactions.get", serde_json::json!({"ledger_tx_id": posted["ledger_tx_id"]})).await.ok();
    assert_eq!(fetched["entries"][0]["amount_minor"], 700);
    cluster.finish().await;
}

/// The journal's row rules hold in the database itself, whatever writes there: a
/// statement that breaks one fails with `check_violation` and writes nothing. (Since
/// migration 0009 the one-column rules are domains; this holds them to the same promise
/// as the table checks they replaced. Since migration 0010 a statement's entries must
/// balance per transaction and currency.)
#[tokio::test]
async fn the_database_refuses_rows_that_break_the_journal_rules() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("alice", "LIABILITY", "IDR", false).await;
    cluster.transfer("t1", "cash", "alice", 700, "IDR").await.ok();
    let entry_copy = |amount: &str, side: &str| {
        format!(
            "insert into ledger_entry (ledger_entry_id, ledger_tx_id, tenant_id, account_id, entry_side, amount_minor,
                 currency_code, entry_seq, balance_after_minor, commit_seq, effective_at, posted_at)
             select gen_random_uuid(), ledger_tx_id, tenant_id, account_id, {side}, {amount}, currency_code, 99,
                 balance_after_minor, commit_seq, effective_at, posted_at
             from ledger_entry limit 1"
        )
    };
    // every entry of one transaction, copied: balanced, so only the rule under test fails
    let balanced_copy = "insert into ledger_entry (ledger_entry_id, ledger_tx_id, tenant_id, account_id, entry_side,
             amount_minor, currency_code, entry_seq, balance_after_minor, commit_seq, effective_at, posted_at)
         select gen_random_uuid(), ledger_tx_id, tenant_id, account_id, entry_side, amount_minor, currency_code,
             entry_seq + 100, balance_after_minor, commit_seq, effective_at, posted_at
         from ledger_entry where ledger_tx_id = (select ledger_tx_id from ledger_entry limit 1)"
        .to_string();
    let transaction_copy = |status: &str, ref_type: &str| {
        format!(
            "insert into ledger_transaction (ledger_tx_id, tenant_id, commit_seq, tx_type, tx_status, idempotency_key,
                 request_fingerprint, external_ref_type, external_ref, occurred_at, posted_at, created_by)
             select gen_random_uuid(), tenant_id, commit_seq, tx_type, {status}, idempotency_key || '-copy',
                 request_fingerprint, {ref_type}, null, occurred_at, posted_at, created_by
             from ledger_transaction limit 1"
        )
    };
    let key = |status: &str| {
        format!(
            "insert into ledger_idempotency (tenant_id, idempotency_key, request_fingerprint, status, expires_at)
             values (gen_random_uuid(), 'rule-test', 'fp', {status}, now() + interval '1 day')"
        )
    };
    let broken = [
        ("a zero amount", entry_copy("0", "entry_side")),
        ("a negative amount", entry_copy("-5", "entry_side")),
        ("an unknown side", entry_copy("amount_minor", "'SIDEWAYS'")),
        ("an entry whose transaction does not balance", entry_copy("amount_minor", "entry_side")),
        ("an unknown transaction status", transaction_copy("'LOST'", "external_ref_type")),
        ("a reference type without a reference", transaction_copy("tx_status", "'psp'")),
        ("an unknown key status", key("'DONE'")),
        ("a succeeded key without its transaction", key("'SUCCEEDED'")),
        ("negative debit totals", "update account_balance set debits_minor = -1".to_string()),
        ("negative credit totals", "update account_balance set credits_minor = -1".to_string()),
        ("negative pending debits", "update account_balance set pending_debits_minor = -1".to_string()),
        ("negative pending credits", "update account_balance set pending_credits_minor = -1".to_string()),
        ("negative unsettled debits", "update account_balance set unsettled_debits_minor = -1".to_string()),
        ("negative unsettled credits", "update account_balance set unsettled_credits_minor = -1".to_string()),
    ];
    let mut shards_with_a_journal = 0;
    for shard in 0..cluster.config.shards.len() {
        let db = cluster.db(shard).await;
        let entries: i64 = sqlx::query_scalar("select count(*) from ledger_entry").fetch_one(&db).await.unwrap();
        let balances: i64 = sqlx::query_scalar("select count(*) from account_balance").fetch_one(&db).await.unwrap();
        if entries == 0 || balances == 0 {
            db.close().await;
            continue;
        }
        shards_with_a_journal += 1;
        let balances_now = "select md5(string_agg(b::text, ',' order by account_id)) from account_balance b";
        let balances_before: String = sqlx::query_scalar(balances_now).fetch_one(&db).await.unwrap();
        let before = cluster.footprint().await;
        // the same rows, written as they are, are accepted: the rule is what fails below
        let mut trial = db.begin().await.unwrap();
        for valid in [balanced_copy.clone(), transaction_copy("tx_status", "external_ref_type"), key("'PROCESSING'")] {
            sqlx::query(sqlx::AssertSqlSafe(valid.clone())).execute(&mut *trial).await.expect(&valid);
        }
        trial.rollback().await.unwrap();
        for (rule, sql) in &broken {
            let error = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&db).await.expect_err(rule);
            let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
            assert_eq!(code.as_deref(), Some("23514"), "{rule}: {error}");
            if rule.contains("does not balance") {
                let constraint = error.as_database_error().and_then(|e| e.constraint());
                assert_eq!(constraint, Some("ledger_entry_balanced_per_currency"), "{rule}: {error}");
            }
        }
        assert_eq!(cluster.footprint().await, before, "a refused statement wrote nothing");
        let balances_after: String = sqlx::query_scalar(balances_now).fetch_one(&db).await.unwrap();
        assert_eq!(balances_after, balances_before, "a refused update changed no balance");
        db.close().await;
    }
    assert!(shards_with_a_journal > 0, "the transfer left a journal somewhere");
    cluster.finish().await;
}

#[tokio::test]
async fn currency_table_matches_the_core_table() {
    let cluster = Cluster::foundation().await;
    let db = cluster.db(0).await;
    let rows: Vec<(String, i16)> =
        sqlx::query_as("select currency_code::text, minor_units from currency order by 1").fetch_all(&db).await.unwrap();
    let core: Vec<(String, i16)> = ledger_core::currency::CURRENCIES.iter().map(|(c, u)| (c.to_string(), *u as i16)).collect();
    assert_eq!(rows, core);
    db.close().await;
    cluster.finish().await;
}

#[tokio::test]
async fn balances_rebuilt_from_entries_equal_the_projection() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "USD", false).await;
    for i in 0..5 {
        cluster.create_account(&format!("w{i}"), "LIABILITY", "USD", false).await;
        cluster.transfer(&format!("f{i}"), "cash", &format!("w{i}"), 1_000 * (i + 1), "USD").await.ok();
    }
    for i in 0..20 {
        let (from, to) = (format!("w{}", i % 5), format!("w{}", (i + 2) % 5));
        cluster.transfer(&format!("m{i}"), &from, &to, 37 + i, "USD").await.ok();
    }
    for shard in 0..cluster.config.shards.len() {
        let db = cluster.db(shard).await;
        let drift: i64 = sqlx::query_scalar(
            "with rebuilt as (
                 select a.account_id,
                        coalesce(sum(case when (e.entry_side = 'DEBIT') = (a.account_type in ('ASSET', 'EXPENSE'))
                                          then e.amount_minor else -e.amount_minor end), 0) as balance,
                        count(e.*) as entries
                 from ledger_account a left join ledger_entry e on e.account_id = a.account_id
                 group by a.account_id)
             select count(*) from rebuilt r join account_balance b using (account_id)
             where r.balance <> b.balance_minor or r.entries <> b.version",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(drift, 0, "projection equals the sum of entries");
        let unbalanced: i64 = sqlx::query_scalar(
            "select count(*) from (select ledger_tx_id, currency_code from ledger_entry group by 1, 2
              having sum(case when entry_side = 'DEBIT' then amount_minor else -amount_minor end) <> 0) t",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(unbalanced, 0);
        let (count, first, last): (i64, Option<i64>, Option<i64>) =
            sqlx::query_as("select count(*), min(commit_seq), max(commit_seq) from ledger_transaction")
                .fetch_one(&db)
                .await
                .unwrap();
        if count > 0 {
            assert_eq!((first, last), (Some(1), Some(count)), "commit_seq is gap-free from 1");
        }
        db.close().await;
    }
    cluster.finish().await;
}

/// The seed's "balance drift" recovery: a balance row changed behind the ledger's back is
/// found by the audit and rewritten from the journal by `admin.rebuild_balances`, and the
/// ledger goes on from the true balance.
#[tokio::test]
async fn a_drifted_balance_is_found_by_the_audit_and_rebuilt_from_the_journal() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "USD", true).await;
    cluster.create_account("wallet", "LIABILITY", "USD", false).await;
    cluster.transfer("fund", "cash", "wallet", 1_000, "USD").await.ok();
    let wallet = ledger_core::ids::account_id(cluster.tenant, "wallet");
    let shard = cluster.config.ring().shard_for_account(wallet) as usize;
    let db = cluster.db(shard).await;
    sqlx::query("update account_balance set balance_minor = balance_minor + 500, version = version + 1 where account_id = $1")
        .bind(wallet)
        .execute(&db)
        .await
        .unwrap();
    let audit = cluster.audit().await;
    assert_eq!(audit["ok"], false);
    let drifting: Vec<serde_json::Value> =
        audit["shards"].as_array().unwrap().iter().flat_map(|s| s["projection_drift"].as_array().unwrap().clone()).collect();
    assert_eq!(drifting, [serde_json::json!(wallet)]);

    let rebuilt = cluster.raw("ledger.v1.admin.rebuild_balances", b"{}".to_vec()).await.ok();
    assert_eq!((rebuilt["ok"].clone(), rebuilt["corrected_count"].clone()), (serde_json::json!(true), serde_json::json!(1)));
    let shards = rebuilt["shards"].as_array().unwrap();
    assert!(shards.iter().any(|s| s["corrected"] == serde_json::json!([wallet])), "{rebuilt}");
    let (balance, version): (i64, i64) =
        sqlx::query_as("select balance_minor, version from account_balance where account_id = $1")
            .bind(wallet)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((balance, version), (1_000, 1));
    assert_eq!(cluster.audit().await["ok"], true);
    // the writer reads the rebuilt row: the next entry continues from the true balance
    let spent = cluster.transfer("spend", "wallet", "cash", 1_000, "USD").await.ok();
    let wallet_entry =
        spent["entries"].as_array().unwrap().iter().find(|e| e["account_id"] == serde_json::json!(wallet)).unwrap().clone();
    assert_eq!(wallet_entry["balance_after_minor"], 0);
    let again = cluster.raw("ledger.v1.admin.rebuild_balances", b"{}".to_vec()).await.ok();
    assert_eq!(again["corrected_count"], 0, "nothing left to rewrite");
    db.close().await;
    cluster.finish().await;
}
