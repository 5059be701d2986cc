//! # ledger-core
//!
//! The pure heart of the ledger: everything that decides what is true, and nothing that
//! talks to a database, a network or a clock. Time and ids are injected, so every
//! decision replays exactly from its inputs.
//!
//! ## Layout
//! - [`money`]: sides, account types, normal balances, checked balance math.
//! - [`currency`]: the ISO 4217 reference table (seeded into every shard's database).
//! - [`ids`]: derived account ids, time-ordered ledger ids that carry their shard.
//! - [`account`]: the in-memory state of an account that a shard writer holds.
//! - [`command`]: validated write commands (create account, set status, post, reverse).
//! - [`validate`]: stateless checks of a post (balance per currency, duplicates, limits).
//! - [`error_code`]: the protocol's error codes as a type, with their statuses.
//! - [`rejection`]: business outcomes that refuse a command, in precedence order.
//! - [`recheck`]: the shard writer's own check of every command it is handed, whoever
//!   sent it (the same rules and refusals as the router's).
//! - [`batch`]: plans a whole batch of commands against account state: per-command
//!   outcomes and the rows to write (the group-commit core), one module per command.
//! - [`fingerprint`]: request fingerprints for idempotency.
//! - [`outbox_form`]: how an event is kept in the outbox (less what the row's columns
//!   say) and put back whole for publishing.
//! - [`ring`]: the consistent-hash ring that places accounts and keys on shards.
//! - [`saga`]: cross-shard transactions: legs, clearing entries, the saga state machine,
//!   what a cross-shard request becomes, and the coordinator as a pure step.

pub mod account;
pub mod batch;
pub mod command;
pub mod currency;
pub mod error_code;
pub mod fingerprint;
pub mod ids;
pub mod money;
pub mod outbox_form;
pub mod recheck;
pub mod rejection;
pub mod ring;
pub mod saga;
pub mod validate;
