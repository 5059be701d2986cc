//! The shard writer: one ractor actor per shard, the only process that writes the
//! shard's database.
//!
//! Group commit: a write command joins `pending`; the first one of a batch casts a
//! `Flush` to the actor itself, which the mailbox delivers after every command already
//! queued. The flush takes up to `batch_commands_max` pending commands, prefetches what
//! they need, lets the pure core plan them ([`ledger_core::batch::plan_batch`]), writes
//! the plan in one database transaction, commits, and only then updates the cache and
//! replies. Nothing waits idly for a batch to fill.
//!
//! Shards on one PostgreSQL server share its cores. With
//! `limits.batches_in_flight_per_database_server`, a writer whose server already runs that
//! many of this node's batches waits for a turn before its `Flush`, still taking commands
//! meanwhile, so that it then writes them together: fewer, larger commits for the same
//! load. That wait is for the server, never for more commands.
//!
//! Fencing: the writer's connection holds a session advisory lock on the shard, and each
//! batch advances the shard watermark guarded by its previous value. A second writer
//! cannot take the lock, and a writer that lost it cannot commit.

use crate::store::{self, StoreError, Watermark};
use chrono::{SubsecRound, Utc};
use ledger_core::account::AccountState;
use ledger_core::batch::{BatchInput, Outcome, Snapshot, plan_batch};
use ledger_core::command::Command;
use ledger_core::ids::RandomIds;
use lru::LruCache;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{error, info, warn};
use uuid::Uuid;

/// Why a write got no business outcome. Both are safe to retry with the same key: the
/// batch either committed (the retry replays) or did not (the retry posts).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailure {
    #[error("shard unavailable: {0}")]
    Unavailable(String),
    /// The database refused the batch for a rule the writer must have checked: a bug.
    #[error("internal: {0}")]
    Internal(String),
}

pub type WriteResult = Result<Outcome, WriteFailure>;

/// Another session holds the shard's fence: this writer must not run.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is owned by another writer (its fence lock is held)")]
pub struct OwnedElsewhere(pub u16);

pub enum ShardMsg {
    /// Writes that arrived together: they enter the pending batch together.
    Write(Vec<(Command, RpcReplyPort<WriteResult>)>),
    /// Write the pending commands, holding a turn of the server gate.
    Flush(OwnedSemaphorePermit),
    /// Recompute the balance projection from the journal (an operator's repair), between
    /// two batches; answers with the ids of the rows it rewrote.
    RebuildBalances(RpcReplyPort<Result<Vec<Uuid>, WriteFailure>>),
}

/// Test-only switches that make rare failures happen on demand.
#[derive(Debug, Default)]
pub struct FaultHooks {
    /// Fail the next batch after its rows are written and before it commits.
    pub fail_next_commit: AtomicBool,
    /// Make the writer actor fail (as a bug would) at its next flush.
    pub crash_writer: AtomicBool,
}

#[derive(Clone)]
pub struct ShardArgs {
    pub shard_id: u16,
    pub database_url: String,
    pub batch_commands_max: usize,
    pub account_cache_max: usize,
    /// Shared by the node's writers of shards on the same PostgreSQL server; as many
    /// turns as `limits.batches_in_flight_per_database_server`, or without a limit
    /// ([`Semaphore::MAX_PERMITS`]) when that is absent.
    pub server_gate: Arc<Semaphore>,
    pub faults: Arc<FaultHooks>,
}

pub struct ShardState {
    shard_id: u16,
    database_url: String,
    writer: Option<PgConnection>,
    watermark: Watermark,
    cache: LruCache<Uuid, AccountState>,
    pending: Vec<(Command, RpcReplyPort<WriteResult>)>,
    /// When the pending batch's flush was scheduled, if it is: the debug line of each batch
    /// says how long it then waited for its turn.
    flush_scheduled: Option<Instant>,
    batch_commands_max: usize,
    server_gate: Arc<Semaphore>,
    faults: Arc<FaultHooks>,
    ids: RandomIds,
}

pub struct ShardActor;

/// Connects, migrates, takes the fence. Fails if another writer holds the shard.
async fn open_writer(shard_id: u16, database_url: &str) -> Result<(PgConnection, Watermark), ActorProcessingErr> {
    let mut conn = PgConnection::connect(database_url).await?;
    store::prepare_shard(&mut conn, shard_id).await?;
    store::use_generic_plans(&mut conn).await?;
    if !store::try_fence(&mut conn, shard_id).await? {
        return Err(OwnedElsewhere(shard_id).into());
    }
    let watermark = store::watermark(&mut conn).await?;
    Ok((conn, watermark))
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(&self, _myself: ActorRef<ShardMsg>, args: ShardArgs) -> Result<ShardState, ActorProcessingErr> {
        let (writer, watermark) = open_writer(args.shard_id, &args.database_url).await?;
        info!(shard_id = args.shard_id, last_commit_seq = watermark.last_commit_seq, "shard writer started");
        Ok(ShardState {
            shard_id: args.shard_id,
            database_url: args.database_url,
            writer: Some(writer),
            watermark,
            cache: LruCache::new(NonZeroUsize::new(args.account_cache_max).expect("config checks > 0")),
            pending: Vec::with_capacity(args.batch_commands_max),
            flush_scheduled: None,
            batch_commands_max: args.batch_commands_max,
            server_gate: args.server_gate,
            faults: args.faults,
            ids: RandomIds::default(),
        })
    }

    async fn post_stop(&self, _myself: ActorRef<ShardMsg>, state: &mut ShardState) -> Result<(), ActorProcessingErr> {
        for (_, reply) in state.pending.drain(..) {
            let _ = reply.send(Err(WriteFailure::Unavailable(format!("shard {} writer stopped", state.shard_id))));
        }
        // closing the connection releases the fence at once, for the writer that follows
        if let Some(conn) = state.writer.take() {
            let _ = conn.close().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Write(writes) => {
                state.pending.extend(writes);
                if state.flush_scheduled.is_none() {
                    state.schedule_flush(&myself)?;
                }
            }
            ShardMsg::RebuildBalances(reply) => {
                let result = state.rebuild_balances().await;
                let fenced = matches!(result, Err(StoreError::Fenced));
                if let Err(error) = &result {
                    warn!(shard_id = state.shard_id, %error, "rebuilding the balances failed");
                }
                let _ = reply.send(result.map_err(|e| WriteFailure::Unavailable(e.to_string())));
                if fenced {
                    // someone else owns the shard: this writer must never write again
                    return Err(format!("shard {} writer fenced off", state.shard_id).into());
                }
            }
            ShardMsg::Flush(turn) => {
                if state.faults.crash_writer.swap(false, Ordering::SeqCst) {
                    return Err(format!("shard {} writer: injected crash", state.shard_id).into());
                }
                let flushing = Instant::now();
                let turn_waited = state.flush_scheduled.take().map(|at| flushing - at);
                let take = state.pending.len().min(state.batch_commands_max);
                let batch: Vec<_> = state.pending.drain(..take).collect();
                let commands = batch.len();
                let more = !state.pending.is_empty();
                state.flush(batch).await?;
                drop(turn);
                tracing::debug!(
                    shard_id = state.shard_id,
                    commands,
                    turn_waited_us = turn_waited.unwrap_or_default().as_micros() as u64,
                    flush_us = flushing.elapsed().as_micros() as u64,
                    "batch flushed"
                );
                if more {
                    state.schedule_flush(&myself)?;
                }
            }
        }
        Ok(())
    }
}

/// Casts the next `Flush` to the writer itself, at once if the server gate
/// (`limits.batches_in_flight_per_database_server`) has a turn free, else once it has.
/// The writer keeps taking commands while it waits; the `Flush` takes all that are pending
/// by then.
fn schedule_flush(myself: &ActorRef<ShardMsg>, server_gate: &Arc<Semaphore>) -> Result<(), ActorProcessingErr> {
    match server_gate.clone().try_acquire_owned() {
        Ok(turn) => myself.cast(ShardMsg::Flush(turn))?,
        Err(_) => {
            let gate = server_gate.clone();
            let myself = myself.clone();
            tokio::spawn(async move {
                if let Ok(turn) = gate.acquire_owned().await {
                    // a writer that stopped meanwhile drops the message, and the turn with it
                    let _ = myself.cast(ShardMsg::Flush(turn));
                }
            });
        }
    }
    Ok(())
}

impl ShardState {
    fn schedule_flush(&mut self, myself: &ActorRef<ShardMsg>) -> Result<(), ActorProcessingErr> {
        self.flush_scheduled = Some(Instant::now());
        schedule_flush(myself, &self.server_gate)
    }

    async fn flush(&mut self, batch: Vec<(Command, RpcReplyPort<WriteResult>)>) -> Result<(), ActorProcessingErr> {
        let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        match self.decide_and_commit(&commands).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // a caller that timed out has gone away; its retry will replay
                    let _ = reply.send(Ok(outcome));
                }
                Ok(())
            }
            Err(error) => {
                let failure = if let StoreError::Unbalanced(_) = &error {
                    // the planner let through what the database refuses: a bug, not a fault
                    // a retry can get past
                    error!(shard_id = self.shard_id, commands = commands.len(), %error, "batch refused by the database");
                    WriteFailure::Internal(format!("shard {} refused a transaction that does not balance", self.shard_id))
                } else {
                    warn!(shard_id = self.shard_id, commands = commands.len(), %error, "batch failed; state reloads from the database");
                    WriteFailure::Unavailable(format!("shard {} could not commit", self.shard_id))
                };
                for reply in replies {
                    let _ = reply.send(Err(failure.clone()));
                }
                if matches!(error, StoreError::Fenced) {
                    // Someone else wrote this shard: this writer must never write again.
                    return Err(format!("shard {} writer fenced off: {error}", self.shard_id).into());
                }
                self.recover().await
            }
        }
    }

    /// Rewrites the balance rows that differ from the journal, in one transaction that
    /// also checks this writer still owns the shard, then forgets the cached states (the
    /// next batches read the rebuilt rows).
    async fn rebuild_balances(&mut self) -> Result<Vec<Uuid>, StoreError> {
        self.ensure_open().await?;
        let owner = self.watermark.last_commit_seq;
        let mut tx = self.writer.as_mut().expect("opened above").begin().await?;
        let owned = store::lock_watermark(&mut tx).await?;
        if owned != owner {
            return Err(StoreError::Fenced);
        }
        let corrected = store::rebuild_balances(&mut tx).await?;
        tx.commit().await?;
        self.cache.clear();
        info!(shard_id = self.shard_id, corrected = corrected.len(), "balances rebuilt from the journal");
        Ok(corrected)
    }

    /// After a failed batch nothing in memory may be trusted to match the database.
    async fn recover(&mut self) -> Result<(), ActorProcessingErr> {
        self.cache.clear();
        if let Some(conn) = self.writer.as_mut()
            && conn.ping().await.is_ok()
        {
            match store::watermark(conn).await {
                Ok(watermark) => {
                    self.watermark = watermark;
                    return Ok(());
                }
                Err(error) => warn!(shard_id = self.shard_id, %error, "cannot read the watermark"),
            }
        }
        self.writer = None;
        match open_writer(self.shard_id, &self.database_url).await {
            Ok((conn, watermark)) => {
                self.writer = Some(conn);
                self.watermark = watermark;
                Ok(())
            }
            // The writer stays down; the next batch tries again and fails its commands
            // with SHARD_UNAVAILABLE until the database is back.
            Err(error) => {
                warn!(shard_id = self.shard_id, %error, "cannot reopen the shard writer");
                if error.downcast_ref::<OwnedElsewhere>().is_some() {
                    return Err(error);
                }
                Ok(())
            }
        }
    }

    /// Plans and commits a batch, first optimistically (its keys assumed new, saving a
    /// round trip), and if a key turns out to be recorded, again with the records loaded.
    async fn decide_and_commit(&mut self, commands: &[Command]) -> Result<Vec<Outcome>, StoreError> {
        match self.try_decide_and_commit(commands, true).await {
            Err(StoreError::KeysAlreadyRecorded) => self.try_decide_and_commit(commands, false).await,
            other => other,
        }
    }

    /// Opens the writer's connection again (fence first) if it was lost.
    async fn ensure_open(&mut self) -> Result<(), StoreError> {
        if self.writer.is_none() {
            let (conn, watermark) =
                open_writer(self.shard_id, &self.database_url).await.map_err(|e| StoreError::WriterDown(e.to_string()))?;
            self.writer = Some(conn);
            self.watermark = watermark;
        }
        Ok(())
    }

    async fn try_decide_and_commit(&mut self, commands: &[Command], optimistic: bool) -> Result<Vec<Outcome>, StoreError> {
        self.ensure_open().await?;
        let conn = self.writer.as_mut().expect("opened above");
        let mut snapshot = Snapshot::default();
        let started = std::time::Instant::now();

        let reversal_targets: Vec<Uuid> = commands.iter().filter_map(Command::reads_transaction).collect();
        if !reversal_targets.is_empty() {
            snapshot.originals = store::load_originals(conn, &reversal_targets).await?;
        }

        let mut wanted: HashSet<Uuid> = commands.iter().flat_map(|c| c.account_ids(self.shard_id)).collect();
        wanted.extend(snapshot.originals.values().flat_map(|o| o.entries.iter().map(|e| e.account_id)));
        let mut missing = Vec::new();
        for id in wanted {
            match self.cache.get(&id) {
                Some(state) => {
                    snapshot.accounts.insert(id, state.clone());
                }
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            for state in store::load_accounts(&mut *conn, &missing).await? {
                snapshot.accounts.insert(state.account_id, state);
            }
        }

        let keys: Vec<(Uuid, String)> = commands.iter().flat_map(|c| c.keys_read().map(|k| (c.tenant_id(), k))).collect();
        // Claims, completions, saga progress and undos need the records; posts, reversals,
        // saga openings and steps can assume new keys (the write proves it).
        let keys_assumed_new = optimistic && !commands.iter().any(Command::needs_key_records);
        if !keys.is_empty() && !keys_assumed_new {
            snapshot.keys = store::load_keys(&mut *conn, &keys).await?;
        }
        let sagas: Vec<Uuid> = commands.iter().filter_map(Command::sagas_read).collect();
        if !sagas.is_empty() {
            snapshot.sagas = store::load_sagas(&mut *conn, &sagas).await?;
        }
        let refs: Vec<_> = commands.iter().filter_map(|c| c.external_ref().map(|r| (c.tenant_id(), r.clone()))).collect();
        if !refs.is_empty() {
            (snapshot.external_refs, snapshot.ref_claims) = store::load_ref_holders(&mut *conn, &refs).await?;
        }

        // Posting time never goes backwards on a shard, so commit order and time agree.
        let clock = Utc::now().trunc_subsecs(6);
        let now = self.watermark.last_posted_at.map_or(clock, |last| clock.max(last));
        let input = BatchInput { shard_id: self.shard_id, now, next_commit_seq: self.watermark.last_commit_seq + 1 };
        let prefetched = started.elapsed();
        let plan = plan_batch(input, &mut snapshot, commands, &mut self.ids);
        let planned = started.elapsed();
        // A keyed command refused without its key being recorded might have been refused
        // for a key it reused (which outranks the refusal): decide it with the records.
        if keys_assumed_new
            && commands.iter().zip(&plan.outcomes).any(|(command, outcome)| {
                command.idempotency_key().is_some()
                    && matches!(outcome, Outcome::Rejected(rejection) if !rejection.is_stored_under_key())
            })
        {
            return Err(StoreError::KeysAlreadyRecorded);
        }

        if !plan.writes.is_empty() {
            let next = Watermark {
                last_commit_seq: plan.next_commit_seq - 1,
                last_event_seq: self.watermark.last_event_seq + plan.writes.outbox.len() as i64,
                last_posted_at: if plan.writes.transactions.is_empty() { self.watermark.last_posted_at } else { Some(now) },
            };
            let inject_failure = self.faults.fail_next_commit.swap(false, Ordering::SeqCst);
            if store::needs_transaction(&plan.writes) || inject_failure {
                let mut tx = conn.begin().await?;
                store::write_batch(&mut tx, &plan.writes, &snapshot, self.watermark, next, keys_assumed_new).await?;
                if inject_failure {
                    tx.rollback().await?;
                    return Err(StoreError::Corrupt("injected commit failure".into()));
                }
                tx.commit().await?;
            } else {
                // the whole batch is one statement: one round trip, committed on its own
                store::write_batch(conn, &plan.writes, &snapshot, self.watermark, next, keys_assumed_new).await?;
            }
            self.watermark = next;
        }
        for (id, state) in snapshot.accounts {
            self.cache.put(id, state);
        }
        tracing::debug!(
            shard_id = self.shard_id,
            commands = commands.len(),
            prefetch_us = prefetched.as_micros() as u64,
            plan_us = (planned - prefetched).as_micros() as u64,
            write_us = (started.elapsed() - planned).as_micros() as u64,
            "batch committed"
        );
        Ok(plan.outcomes)
    }
}
