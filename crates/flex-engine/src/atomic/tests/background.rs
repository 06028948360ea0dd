//! The background applier: commits only log, batches are applied (and idle files
//! checkpointed) interleaved with the foreground.

use super::crash::{check_run_mode, crash_sweep, seeds_both_grains};
use super::workload::{workload_mode, Pol};
use crate::atomic::protocol::Policy;

#[test]
fn background_apply_crash_at_every_fence() {
    // Commits only log; batches are applied step by step (and idle files checkpointed)
    // interleaved with writes, reads, truncates and commits; a crash at every fence,
    // including those of the background checkpoint's sync and reset.
    crash_sweep(
        "background",
        200,
        seeds_both_grains(10).map(|(seed, page)| {
            let pol = if seed % 2 == 0 {
                Pol::Switch
            } else {
                Pol::Fixed(Policy::Redo)
            };
            check_run_mode(seed * 6151, page, 80, 24 << 10, 3, true, pol)
        }),
    );
}

#[test]
fn background_paths_happen() {
    // The interleavings above include batches applied in the background, foreground
    // checkpoints with a batch in flight, early commits and background checkpoints.
    let (mut batches, mut resets, mut early, mut ckpt) = (0, 0, 0, 0);
    for (seed, page) in seeds_both_grains(10) {
        let redo = Pol::Fixed(Policy::Redo);
        let (run, b, r) = workload_mode(seed * 6151, page, 80, 24 << 10, true, redo);
        batches += b;
        resets += r;
        early += run.early;
        ckpt += run.checkpoints;
    }
    eprintln!("batches {batches} resets {resets} early {early} checkpoints {ckpt}");
    assert!(batches > 20, "batches {batches}");
    assert!(resets > 0, "no background checkpoint");
    assert!(early > 0, "no early commit");
    assert!(ckpt > resets, "no foreground checkpoint");
}
