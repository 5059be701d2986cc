//! The shard writer's supervisor: restarts a writer actor that died (a bug that made its
//! handler fail, a connection it could not reopen, an injected crash), with a growing
//! pause, for as long as the node runs. A writer that cannot start because another node
//! holds the shard's fence just keeps being retried: should that node go away, this one
//! takes over — the fence guarantees there is never more than one writer.
//!
//! The first start is not retried: a node that cannot take its shards when it starts
//! fails to start, so that a misconfigured second node is noticed.

use crate::shard::{ShardActor, ShardArgs, ShardMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::{info, warn};

/// The shard's current writer, as the node's request handlers see it.
#[derive(Default)]
pub struct WriterSlot {
    current: RwLock<Option<ActorRef<ShardMsg>>>,
    /// Set when the node shuts down: a writer that stops then is not restarted.
    stopping: AtomicBool,
    pub restarts: AtomicU64,
}

impl WriterSlot {
    pub fn writer(&self) -> Option<ActorRef<ShardMsg>> {
        self.current.read().expect("not poisoned").clone()
    }

    fn set(&self, writer: Option<ActorRef<ShardMsg>>) {
        *self.current.write().expect("not poisoned") = writer;
    }

    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

pub enum SupervisorMsg {
    Respawn,
}

pub struct ShardSupervisor;

pub struct SupervisorArgs {
    pub writer: ShardArgs,
    pub slot: Arc<WriterSlot>,
}

pub struct SupervisorState {
    writer: ShardArgs,
    slot: Arc<WriterSlot>,
    pause: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

impl Actor for ShardSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let (writer, _) = Actor::spawn_linked(None, ShardActor, args.writer.clone(), myself.get_cell()).await?;
        args.slot.set(Some(writer));
        Ok(SupervisorState { writer: args.writer, slot: args.slot, pause: FIRST_PAUSE })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Respawn = message;
        if state.slot.stopping.load(Ordering::SeqCst) || state.slot.writer().is_some() {
            return Ok(());
        }
        let shard_id = state.writer.shard_id;
        match Actor::spawn_linked(None, ShardActor, state.writer.clone(), myself.get_cell()).await {
            Ok((writer, _)) => {
                state.slot.set(Some(writer));
                state.slot.restarts.fetch_add(1, Ordering::SeqCst);
                state.pause = FIRST_PAUSE;
                info!(shard_id, "shard writer restarted");
            }
            Err(error) => {
                warn!(shard_id, %error, pause_ms = state.pause.as_millis() as u64, "shard writer cannot start yet");
                schedule_respawn(&myself, state);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let shard_id = state.writer.shard_id;
        let why = match &event {
            SupervisionEvent::ActorFailed(_, error) => error.to_string(),
            SupervisionEvent::ActorTerminated(_, _, reason) => reason.clone().unwrap_or_else(|| "stopped".into()),
            _ => return Ok(()),
        };
        let current = state.slot.writer();
        let is_current = event.actor_cell().zip(current.as_ref()).is_some_and(|(cell, writer)| cell.get_id() == writer.get_id());
        if !is_current {
            return Ok(());
        }
        state.slot.set(None);
        if state.slot.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        warn!(shard_id, reason = %why, "shard writer died; restarting it");
        schedule_respawn(&myself, state);
        Ok(())
    }
}

fn schedule_respawn(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
    let pause = state.pause;
    state.pause = (state.pause * 2).min(LONGEST_PAUSE);
    let supervisor = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(pause).await;
        let _ = supervisor.cast(SupervisorMsg::Respawn);
    });
}
