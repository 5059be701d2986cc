select saga_id, tenant_id, state, updated_at from ledger_saga
  where state in ('RUNNING', 'COMPENSATING') order by updated_at limit 100;
