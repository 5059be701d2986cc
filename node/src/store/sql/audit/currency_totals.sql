select currency_code::text,
         coalesce(sum(amount_minor) filter (where entry_side = 'DEBIT'), 0)::text,
         coalesce(sum(amount_minor) filter (where entry_side = 'CREDIT'), 0)::text
  from ledger_entry group by currency_code order by currency_code;
