//! Everything the node says to PostgreSQL. Write functions run inside the shard writer's
//! transaction; read functions take any executor (the read pool).
//!
//! Writes are set-based: one statement per table per batch, with the batch's rows bound
//! as arrays and spread by `UNNEST`, so a batch of 500 transfers costs the same number
//! of round trips as one.

//!
//! One file per concern: `database`, `fencing`, `prefetch`, `batch_write`, `sagas`,
//! `reads`, `audit` and `outbox`; their SQL lives beside them in `sql/<concern>/<name>.sql`.

mod audit;
mod batch_write;
mod database;
mod fencing;
mod outbox;
mod prefetch;
mod reads;
mod sagas;

pub use audit::*;
pub use batch_write::*;
pub use database::*;
pub use fencing::*;
pub use outbox::*;
pub use prefetch::*;
pub use reads::*;
pub use sagas::*;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Monthly partitions created ahead of time at start-up.
pub const PARTITION_MONTHS_AHEAD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("this database belongs to shard {found}, not shard {expected}")]
    WrongShard { expected: u16, found: i32 },
    #[error("the shard watermark moved under us: another writer committed to this shard")]
    Fenced,
    #[error("a key of an optimistically planned batch is already recorded")]
    KeysAlreadyRecorded,
    /// The database refused entries that do not balance (migration 0010): the writer let
    /// through what it must never write. A bug, never a client's doing.
    #[error("the database refused a transaction that does not balance: {0}")]
    Unbalanced(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the shard writer is not connected: {0}")]
    WriterDown(String),
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}
