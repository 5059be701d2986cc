-- One transfer, pgbench script. :accounts is set with -D accounts=N.
\set a random(1, :accounts)
\set b 1 + ((:a + random(0, :accounts - 2)) % :accounts)
\set amount random(1, 100)
BEGIN;
SELECT account_id, balance_minor FROM naive_account WHERE account_id IN (:a, :b) ORDER BY account_id FOR UPDATE;
UPDATE naive_account SET balance_minor = balance_minor - :amount, version = version + 1, updated_at = now()
 WHERE account_id = :a AND balance_minor >= :amount;
WITH tx AS (
  INSERT INTO naive_transaction (idempotency_key, tx_type) VALUES (gen_random_uuid()::text, 'TRANSFER') RETURNING ledger_tx_id
)
INSERT INTO naive_entry (ledger_tx_id, account_id, entry_side, amount_minor)
SELECT ledger_tx_id, :a, 'DEBIT', :amount FROM tx UNION ALL SELECT ledger_tx_id, :b, 'CREDIT', :amount FROM tx;
UPDATE naive_account SET balance_minor = balance_minor + :amount, version = version + 1, updated_at = now() WHERE account_id = :b;
COMMIT;
