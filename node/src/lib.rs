//! # ledger-node
//!
//! A node owns shards. For each it runs the single writer (a ractor actor with group
//! commit), a read pool, the internal NATS subscription routers send to, and the outbox
//! relay to JetStream.
//!
//! ## Layout
//! - [`store`]: everything said to PostgreSQL, one module per concern (fencing, prefetch,
//!   the batch write, sagas, reads, audit, outbox), the SQL in `store/sql/`.
//! - [`shard`]: the shard writer actor: batching, fencing, recovery after a failed commit.
//! - [`supervisor`]: restarts a shard writer that died.
//! - [`server`]: the node process: starts shards, serves internal requests.
//! - [`outbox`]: the relay from `ledger_outbox` to the `LEDGER_EVENTS` stream.

pub mod outbox;
pub mod server;
pub mod shard;
pub mod store;
pub mod supervisor;
