-- The outbox relay keeps its place with a cursor instead of marking every row.
--
-- Marking each published event (published_at, attempt_count, and the partial index on
-- unpublished rows) rewrote every outbox row a second time: as much database work as
-- writing it. Instead, the shard writer numbers events gap-free per shard (event_seq, in
-- commit order, like commit_seq), and the relay records the last event_seq it has had
-- acknowledged by JetStream. Delivery stays at least once: after a crash the relay
-- publishes again from its cursor, and JetStream drops the duplicates by Nats-Msg-Id.

alter table ledger_shard add column last_event_seq bigint not null default 0;

alter table ledger_outbox add column event_seq bigint;
update ledger_outbox o set event_seq = n.seq
from (select outbox_id, row_number() over (order by created_at, outbox_id) as seq from ledger_outbox) n
where n.outbox_id = o.outbox_id;
alter table ledger_outbox alter column event_seq set not null;
alter table ledger_outbox add constraint uq_ledger_outbox_event_seq unique (event_seq);
update ledger_shard set last_event_seq = (select coalesce(max(event_seq), 0) from ledger_outbox);

create table ledger_outbox_cursor (
    singleton boolean primary key default true,
    last_published_event_seq bigint not null,
    updated_at timestamptz not null default now(),
    constraint ck_ledger_outbox_cursor_singleton check (singleton)
);
insert into ledger_outbox_cursor (last_published_event_seq)
select coalesce(max(event_seq), 0) from ledger_outbox where published_at is not null;

drop index ix_ledger_outbox_unpublished;
alter table ledger_outbox drop column published_at, drop column attempt_count;
