//! The load tools' shared parts. `ledger-load` (src/main.rs) drives the ledger over its
//! public NATS protocol; `ledger-echo` (src/bin/ledger-echo.rs, [`echo`]) answers that
//! protocol's post subject with nothing behind it, so that a benchmark can measure the
//! message path's own cost beside the ledger's.

pub mod echo;
