//! The outbox relay: publishes each shard's committed events to the JetStream stream
//! `LEDGER_EVENTS`, at least once, with `Nats-Msg-Id` = the event id so that JetStream
//! drops the duplicates a crash between publish and mark can cause. Events are stored
//! less what the outbox row's columns say (`ledger_core::outbox_form`) and published whole.

use crate::store;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use ledger_core::outbox_form::{EventColumns, published_payload};
use ledger_protocol::subject::{EVENTS_STREAM, EVENTS_SUBJECTS, events_subject};
use sqlx::PgPool;
use std::time::Duration;
use tracing::warn;

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
    let cursor = store::outbox_cursor(pool).await?;
    let events = store::outbox_events(pool, cursor, RELAY_BATCH_EVENTS_MAX).await?;
    let Some(last) = events.last() else { return Ok(0) };
    let (last_seq, count) = (last.event_seq, events.len());
    let mut acks = Vec::with_capacity(count);
    for stored in events {
        let columns = EventColumns {
            event_id: stored.event_id,
            tenant_id: stored.tenant_id,
            aggregate_type: &stored.aggregate_type,
            aggregate_id: stored.aggregate_id,
            event_type: &stored.event_type,
        };
        let event = serde_json::to_vec(&published_payload(columns, stored.payload))?;
        let message = PublishMessage::build().message_id(stored.event_id.to_string()).payload(event.into());
        let ack = js
            .send_publish(events_subject(stored.tenant_id, &stored.event_type), message)
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
    }
    // only after JetStream acknowledged every event up to it
    store::advance_outbox_cursor(pool, last_seq).await?;
    Ok(count)
}
