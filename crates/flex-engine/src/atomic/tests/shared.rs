//! Files going shared (another process opens them) at random moments, under crashes.

use super::crash::{check_run_mode, crash_sweep, seeds_both_grains};
use super::workload::Pol;

#[test]
fn going_shared_crash_at_every_fence() {
    // Another process opens the file at random moments: committed work is applied and
    // checkpointed, the redo transaction in progress is redone in place under undo
    // records. A crash at every fence must still give the last commit (or the one in
    // flight), and reads must see the process's own writes across the conversion.
    crash_sweep(
        "shared",
        200,
        seeds_both_grains(12).map(|(seed, page)| {
            check_run_mode(seed * 6151, page, 90, 24 << 10, 3, false, Pol::Shared)
        }),
    );
}
