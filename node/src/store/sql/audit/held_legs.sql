select saga_id, tenant_id, step, created_at from ledger_saga_hold order by created_at limit 100;
