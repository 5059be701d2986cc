//! The router→shard transport: requests in-process to the shards of a node in this
//! process, over NATS to the others, with a shard's writes batched into few messages.

use futures::future::BoxFuture;
use ledger_config::ClusterConfig;
use ledger_core::command::Command;
use ledger_core::ring::ShardId;
use ledger_protocol::internal::{ShardReply, ShardRequest};
use ledger_protocol::subject;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::warn;

/// The shards of a node running in this process, reached without NATS: the same handling
/// without the two NATS hops and the JSON encoding of commands and replies that a router
/// in another process pays for each batch. The launcher (`ledger-router --node`) provides
/// them; a router on its own has [`NoLocalShards`].
pub trait InProcessShards: Send + Sync {
    /// Whether `shard` is one of them.
    fn owns(&self, shard: ShardId) -> bool;
    /// What `shard` answers to `request`.
    fn request(&self, shard: ShardId, request: ShardRequest) -> BoxFuture<'static, ShardReply>;
    /// One reply per command, in order, committed in one batch as a `WriteBatch` message
    /// would be.
    fn write(&self, shard: ShardId, commands: Vec<Command>) -> BoxFuture<'static, Vec<ShardReply>>;
}

/// A router on its own: every shard is reached over NATS.
pub struct NoLocalShards;

impl InProcessShards for NoLocalShards {
    fn owns(&self, _: ShardId) -> bool {
        false
    }

    fn request(&self, shard: ShardId, _: ShardRequest) -> BoxFuture<'static, ShardReply> {
        Box::pin(std::future::ready(ShardReply::internal(&format!("shard {shard} is not in this process"))))
    }

    fn write(&self, shard: ShardId, commands: Vec<Command>) -> BoxFuture<'static, Vec<ShardReply>> {
        let refused = ShardReply::internal(&format!("shard {shard} is not in this process"));
        Box::pin(std::future::ready(vec![refused; commands.len()]))
    }
}

/// Most writes one router puts into one message to a shard.
pub const WRITE_BATCH_COMMANDS_MAX: usize = 256;
/// Most write messages one router has outstanding to one shard; while they are out, new
/// writes queue and leave together in the next message.
pub const WRITE_BATCHES_IN_FLIGHT_MAX: usize = 4;

struct PendingWrite {
    command: Command,
    reply: tokio::sync::oneshot::Sender<ShardReply>,
}

/// Requests to shards, with the cluster's timeout: in-process to the shards of a node in
/// this process, over NATS to the others.
#[derive(Clone)]
pub(crate) struct ShardCalls {
    pub(crate) client: async_nats::Client,
    pub(crate) local: Arc<dyn InProcessShards>,
    pub(crate) request_timeout: Duration,
}

/// [`ShardCalls`], with writes to a shard batched: whatever queued while earlier messages
/// were out goes in one message.
#[derive(Clone)]
pub(crate) struct ShardLink {
    calls: ShardCalls,
    writers: Arc<std::collections::HashMap<ShardId, tokio::sync::mpsc::Sender<PendingWrite>>>,
}

impl std::ops::Deref for ShardLink {
    type Target = ShardCalls;

    fn deref(&self) -> &ShardCalls {
        &self.calls
    }
}

impl ShardLink {
    pub(crate) fn new(calls: ShardCalls, config: &ClusterConfig) -> ShardLink {
        let mut writers = std::collections::HashMap::new();
        for shard in &config.shards {
            let (queue, pending) = tokio::sync::mpsc::channel(config.limits.shard_queue_commands_max);
            writers.insert(shard.id, queue);
            tokio::spawn(batch_writes(calls.clone(), shard.id, pending));
        }
        ShardLink { calls, writers: Arc::new(writers) }
    }

    pub(crate) async fn write(&self, shard: ShardId, command: Command) -> ShardReply {
        let Some(queue) = self.writers.get(&shard) else {
            return ShardReply::internal(&format!("no shard {shard} in the cluster config"));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if queue.try_send(PendingWrite { command, reply }).is_err() {
            return ShardReply::unavailable(&format!("too many writes queued for shard {shard}; retry with the same key"));
        }
        answer.await.unwrap_or_else(|_| ShardReply::internal("the write batcher stopped"))
    }
}

impl ShardCalls {
    pub(crate) async fn send(&self, shard: ShardId, request: &ShardRequest) -> ShardReply {
        self.send_within(self.request_timeout, shard, request).await
    }

    pub(crate) async fn send_within(&self, timeout: Duration, shard: ShardId, request: &ShardRequest) -> ShardReply {
        if self.local.owns(shard) {
            return tokio::time::timeout(timeout, self.local.request(shard, request.clone()))
                .await
                .unwrap_or_else(|_| late(shard));
        }
        let body = serde_json::to_vec(request).expect("requests serialize");
        let ask = self.client.request(subject::shard_subject(shard), body.into());
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(message)) => serde_json::from_slice(&message.payload)
                .unwrap_or_else(|error| ShardReply::internal(&format!("malformed shard reply: {error}"))),
            Ok(Err(error)) => {
                warn!(shard, %error, "shard request failed");
                ShardReply::unavailable(&format!("shard {shard} cannot be reached; retry with the same key"))
            }
            Err(_) => late(shard),
        }
    }

    /// One reply per command, in order, for commands that go to a shard together.
    async fn write_together(&self, shard: ShardId, commands: Vec<Command>) -> Vec<ShardReply> {
        let count = commands.len();
        if self.local.owns(shard) {
            return tokio::time::timeout(self.request_timeout, self.local.write(shard, commands))
                .await
                .unwrap_or_else(|_| vec![late(shard); count]);
        }
        let request = if count == 1 {
            ShardRequest::Write { command: Box::new(commands.into_iter().next().expect("one")) }
        } else {
            ShardRequest::WriteBatch { commands }
        };
        let reply = self.send(shard, &request).await;
        if count == 1 {
            return vec![reply];
        }
        match reply {
            ShardReply::Batch(answers) if answers.len() == count => answers,
            // the whole message failed: every write in it gets that failure
            ShardReply::Refused { .. } => vec![reply; count],
            _ => vec![ShardReply::internal("malformed batch reply from the shard"); count],
        }
    }
}

fn late(shard: ShardId) -> ShardReply {
    ShardReply::unavailable(&format!("shard {shard} did not answer in time; retry with the same key"))
}

/// Drains one shard's write queue into messages of up to [`WRITE_BATCH_COMMANDS_MAX`].
async fn batch_writes(calls: ShardCalls, shard: ShardId, mut pending: tokio::sync::mpsc::Receiver<PendingWrite>) {
    let in_flight = Arc::new(Semaphore::new(WRITE_BATCHES_IN_FLIGHT_MAX));
    let mut batch = Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX);
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        if pending.recv_many(&mut batch, WRITE_BATCH_COMMANDS_MAX).await == 0 {
            return;
        }
        let writes = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH_COMMANDS_MAX));
        let calls = calls.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<Command>, Vec<_>) = writes.into_iter().map(|w| (w.command, w.reply)).unzip();
            let answers = calls.write_together(shard, commands).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            drop(permit);
        });
    }
}
