//! The outbox relay: publishes each shard's committed events to the JetStream stream
//! `LEDGER_EVENTS`, at least once, with `Nats-Msg-Id` = the event id so that JetStream
//! drops the duplicates a crash between publish and mark can cause. Events are stored
//! less what the outbox row's columns say (`ledger_core::outbox_form`) and published whole.

use async_nats::jetstream::{self, message::PublishMessage, stream};
use ledger_core::outbox_form::{EventColumns, published_payload};
use ledger_protocol::subject::{EVENTS_STREAM, EVENTS_SUBJECTS, events_subject};
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::time::Duration;
use tracing::warn;
use uuid::Uuid;

/// Events published per round.
pub const RELAY_BATCH_EVENTS_MAX: i64 = 500;
pub const RELAY_IDLE_INTERVAL_MS: u64 = 100;

pub async fn ensure_stream(client: &async_nats::Client) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(stream::Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: vec![EVENTS_SUBJECTS.to_owned()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("create stream {EVENTS_STREAM}: {e}"))?;
    Ok(())
}

pub async fn relay(client: async_nats::Client, pool: PgPool, shard_id: u16) {
    let js = jetstream::new(client);
    loop {
        match relay_once(&js, &pool).await {
            Ok(count) if count as i64 == RELAY_BATCH_EVENTS_MAX => continue,
            Ok(_) => {}
            Err(error) => warn!(shard_id, %error, "outbox relay round failed"),
        }
        tokio::time::sleep(Duration::from_millis(RELAY_IDLE_INTERVAL_MS)).await;
    }
}

async fn relay_once(js: &jetstream::Context, pool: &PgPool) -> anyhow::Result<usize> {
    // The cursor is read first and bound as a value: joined in, the planner would walk the
    // event_seq index from the very first event on every round.
    let cursor: i64 = sqlx::query_scalar("select last_published_event_seq from ledger_outbox_cursor").fetch_one(pool).await?;
    let rows = sqlx::query(
        "select event_seq, outbox_id, tenant_id, event_type, aggregate_type, aggregate_id, payload::text
         from ledger_outbox where event_seq > $1 order by event_seq limit $2",
    )
    .bind(cursor)
    .bind(RELAY_BATCH_EVENTS_MAX)
    .fetch_all(pool)
    .await?;
    let Some(last) = rows.last() else { return Ok(0) };
    let last_seq: i64 = last.try_get(0)?;
    let mut acks = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get(1)?;
        let tenant_id: Uuid = row.try_get(2)?;
        let event_type: String = row.try_get(3)?;
        let aggregate_type: String = row.try_get(4)?;
        let aggregate_id: Uuid = row.try_get(5)?;
        let stored: Value = serde_json::from_str(row.try_get(6)?)?;
        let columns =
            EventColumns { event_id: id, tenant_id, aggregate_type: &aggregate_type, aggregate_id, event_type: &event_type };
        let event = serde_json::to_vec(&published_payload(columns, stored))?;
        let message = PublishMessage::build().message_id(id.to_string()).payload(event.into());
        let ack = js
            .send_publish(events_subject(tenant_id, &event_type), message)
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
    }
    // only after JetStream acknowledged every event up to it
    sqlx::query(
        "update ledger_outbox_cursor set last_published_event_seq = $1, updated_at = now() where last_published_event_seq < $1",
    )
    .bind(last_seq)
    .execute(pool)
    .await?;
    Ok(rows.len())
}
