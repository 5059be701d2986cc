select count(*) from ledger_transaction;
