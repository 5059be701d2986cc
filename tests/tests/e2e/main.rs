//! End-to-end tests against real PostgreSQL and real NATS. One binary, so that the
//! heavy dependency tree is linked once.

mod concurrency;
mod database;
mod echo;
mod errors;
mod faults;
mod forged;
mod idempotency;
mod reversal;
mod saga;
mod service;
mod sharded;
mod writer;
