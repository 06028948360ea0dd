//! Undo logging: old bytes saved before each in-place change, crashes rolled back.

use super::crash::{check_run_mode, crash_sweep, seeds_both_grains};
use super::workload::Pol;
use crate::atomic::protocol::Policy;

#[test]
fn undo_crash_at_every_fence() {
    // Undo logging only: old bytes saved durably before each in-place change, the data
    // synced and the log dropped at commit; crashes roll back to the last commit.
    crash_sweep(
        "undo",
        200,
        seeds_both_grains(10).map(|(seed, page)| {
            let undo = Pol::Fixed(Policy::Undo);
            check_run_mode(seed * 3571, page, 80, 24 << 10, 3, false, undo)
        }),
    );
}
