//! # ledger-router
//!
//! The NATS front door: the `ledger` service of docs/PROTOCOL.md (so `$SRV.PING|INFO|STATS.ledger`
//! answer), in a queue group so that any number of routers share the load. A router keeps
//! no state of its own: it parses and validates a request, places its accounts on the
//! hash ring, forwards the work to the shard that owns them, and relays the answer with
//! the protocol's error headers.
//!
//! Transactions whose accounts live on different shards run as sagas (`saga`); every
//! router also resumes sagas whose coordinator died.
//!
//! ## Layout
//! - [`service`]: start-up: the NATS service, its endpoints, replies with error headers.
//! - `dispatch`: a request's subject and body to the shard (or saga) that serves it.
//! - `keyed`: posts and reversals, with their key and reference claimed on home shards.
//! - `admin` and [`audit`]: the operator operations.
//! - [`link`]: the router→shard transport: in-process or over NATS, writes batched.
//! - `saga` and `claims`: cross-shard transactions and the sweep of abandoned claims.

mod admin;
pub mod audit;
mod claims;
mod dispatch;
#[cfg(all(feature = "fault-injection", debug_assertions))]
pub mod faults;
mod keyed;
pub mod link;
mod saga;
pub mod service;

pub use keyed::external_ref_home_key;
pub use link::{InProcessShards, NoLocalShards};
pub use service::{run, run_beside};

use link::ShardLink;

use ledger_config::ClusterConfig;
use ledger_core::ring::HashRing;
use std::time::Duration;
use uuid::Uuid;

pub struct Router {
    link: ShardLink,
    config: ClusterConfig,
    ring: HashRing,
    /// Facts of accounts (existence, currency, type) read for sagas. They never change
    /// once an account exists, so a cached fact is never stale; absence is not cached.
    account_facts: std::sync::Mutex<lru::LruCache<(Uuid, Uuid), ledger_protocol::internal::AccountFacts>>,
}

/// How long the audit waits for a shard's part (it scans the shard's journal).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Most account facts one router keeps.
const ACCOUNT_FACTS_CACHED_MAX: usize = 200_000;
