select count(*) from ledger_account;
