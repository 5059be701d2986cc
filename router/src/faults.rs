//! Test-only fault hooks, compiled in only with the `fault-injection` feature (the test
//! crate turns it on) and only into debug builds: a release build never has them, even
//! when a workspace build unifies the feature in.
//!
//! `LEDGER_FAULT_HANG_BEFORE_STEP=<n>` makes the coordinator stop before it sends step `n`
//! of a saga (not an undo or a release): it writes the file named by `LEDGER_FAULT_MARKER` and then
//! never goes on, so that a test can SIGKILL the process at exactly that point, between
//! two legs.

use ledger_core::saga::StepPhase;
use std::time::Duration;

pub async fn before_step(step: usize, phase: StepPhase) {
    let Some(target) = std::env::var("LEDGER_FAULT_HANG_BEFORE_STEP").ok().and_then(|v| v.parse::<usize>().ok()) else {
        return;
    };
    if phase != StepPhase::Forward || step != target {
        return;
    }
    if let Ok(marker) = std::env::var("LEDGER_FAULT_MARKER") {
        let _ = std::fs::write(marker, format!("hanging before saga step {step}\n"));
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
