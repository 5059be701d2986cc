//! Concurrency from the seed's test list: many debits on one account, opposite transfers.

use ledger_tests::Cluster;

#[tokio::test]
async fn hundred_concurrent_debits_against_funds_for_sixty() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "IDR", false).await;
    cluster.create_account("wallet", "LIABILITY", "IDR", false).await;
    cluster.create_account("merchant", "LIABILITY", "IDR", false).await;
    cluster.transfer("fund", "cash", "wallet", 60 * 250, "IDR").await.ok();
    let asks = (0..100).map(|i| {
        let cluster = &cluster;
        async move { cluster.transfer(&format!("debit-{i}"), "wallet", "merchant", 250, "IDR").await }
    });
    let replies = futures::future::join_all(asks).await;
    let posted = replies.iter().filter(|r| r.is_ok()).count();
    let refused = replies.iter().filter(|r| r.code() == Some("INSUFFICIENT_FUNDS")).count();
    assert_eq!((posted, refused), (60, 40));
    assert_eq!(cluster.balance("wallet").await, 0);
    assert_eq!(cluster.balance("merchant").await, 60 * 250);
    let statement = cluster.statement("wallet").await;
    assert!(statement.iter().all(|e| e["balance_after_minor"].as_i64().unwrap() >= 0), "never below zero");
    cluster.finish().await;
}

#[tokio::test]
async fn opposite_transfers_finish_and_conserve_the_total() {
    let cluster = Cluster::foundation().await;
    cluster.create_account("cash", "ASSET", "EUR", false).await;
    cluster.create_account("a", "LIABILITY", "EUR", false).await;
    cluster.create_account("b", "LIABILITY", "EUR", false).await;
    cluster.transfer("fund-a", "cash", "a", 5_000, "EUR").await.ok();
    cluster.transfer("fund-b", "cash", "b", 5_000, "EUR").await.ok();
    let asks = (0..200).map(|i| {
        let cluster = &cluster;
        async move {
            let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
            cluster.transfer(&format!("swap-{i}"), from, to, 1 + (i % 7) as i64, "EUR").await
        }
    });
    let replies = tokio::time::timeout(std::time::Duration::from_secs(60), futures::future::join_all(asks))
        .await
        .expect("no deadlock: all transfers finish");
    assert!(replies.iter().all(|r| r.is_ok()), "all transfers post");
    assert_eq!(cluster.balance("a").await + cluster.balance("b").await, 10_000);
    assert_eq!(cluster.balance("cash").await, 10_000);
    cluster.finish().await;
}
