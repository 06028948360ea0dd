//! Redo logging (the default): crashes at every fence on cache lines and pages, early
//! commits and checkpoints, and the uncommitted tail discarded by recovery.

use super::crash::{check_run, crash_sweep, recover_image};
use super::workload::{workload, INO};
use crate::atomic::log::Log;
use crate::atomic::protocol::Core;
use crate::persist::sim::{SimDev, World};

#[test]
fn crash_at_every_fence_cache_line() {
    crash_sweep(
        "cache-line",
        200,
        (1..=12u64).map(|seed| check_run(seed * 7919, false, 80, 24 << 10, 4)),
    );
}

#[test]
fn crash_at_every_fence_page() {
    crash_sweep(
        "page",
        100,
        (1..=12u64).map(|seed| check_run(seed * 104_729, true, 80, 24 << 10, 4)),
    );
}

#[test]
fn early_commits_and_checkpoints_happen() {
    // A small bound forces early commits and checkpoints inside the workload: both paths
    // are then covered by the crash tests above.
    let run = workload(99, false, 200, 16 << 10);
    assert!(run.checkpoints > 0, "no checkpoint");
    assert!(run.early > 0, "no early commit");
}

#[test]
fn uncommitted_tail_is_discarded() {
    let w = World::new(vec![0usize]);
    let l = World::add(&w, &[], false);
    let d = World::add(&w, b"hello world", false);
    let mut data = SimDev {
        w: w.clone(),
        dev: d,
        page: false,
    };
    let log = Log::create(
        SimDev {
            w: w.clone(),
            dev: l,
            page: false,
        },
        INO,
        0,
    )
    .unwrap();
    let mut c = Core::new(log, 11, 1 << 20);
    // SAFETY: our own buffers.
    unsafe { c.write(&mut data, 0, b"HELLO".as_ptr(), 5, false) }.unwrap();
    c.commit(&mut data).unwrap();
    // SAFETY: our own buffers.
    unsafe { c.write(&mut data, 6, b"WORLD!!".as_ptr(), 7, false) }.unwrap();
    c.truncate(&mut data, 3).unwrap();
    // Everything stored reaches the durable image (a kill -9 on the page cache).
    let img = {
        let g = w.borrow();
        vec![g.contents(l), g.contents(d)]
    };
    let (got, _) = recover_image(&img, false, false);
    assert_eq!(got, b"HELLO world");
}
