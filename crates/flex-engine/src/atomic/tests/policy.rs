//! The mode per transaction: random policy switches under crashes, both modes and the
//! switch actually happening, and the auto policy following the read/write mix.

use super::crash::{check_run_mode, crash_sweep, seeds_both_grains};
use super::workload::{workload_mode, Pol, INO};
use crate::atomic::log::Log;
use crate::atomic::protocol::{Core, CoreStats, Mode, Policy};
use crate::persist::sim::{SimDev, World};

#[test]
fn switching_crash_at_every_fence() {
    // The policy changes at random (redo, undo, auto driven by bursts of reads): the
    // mode switches between transactions, and inside one when an undo transaction's
    // truncation is too large to save. A crash at every fence of those runs.
    crash_sweep(
        "switching",
        200,
        seeds_both_grains(12).map(|(seed, page)| {
            check_run_mode(seed * 7727, page, 90, 24 << 10, 3, false, Pol::Switch)
        }),
    );
}

#[test]
fn both_modes_and_the_switch_happen() {
    // The runs above cover what they claim: undo commits, redo commits, switches both
    // ways, and undo transactions that went on as redo.
    let mut st = CoreStats::default();
    for (seed, page) in seeds_both_grains(12) {
        let (run, _, _) = workload_mode(seed * 7727, page, 90, 24 << 10, false, Pol::Switch);
        st.commits += run.stats.commits;
        st.undo_commits += run.stats.undo_commits;
        st.switches += run.stats.switches;
        st.undo_to_redo += run.stats.undo_to_redo;
    }
    eprintln!("{st:?}");
    assert!(st.undo_commits > 20, "{st:?}");
    assert!(st.commits - st.undo_commits > 20, "{st:?}");
    assert!(st.switches > 20, "{st:?}");
    assert!(st.undo_to_redo > 0, "{st:?}");
    let undo = workload_mode(5, true, 60, 24 << 10, false, Pol::Fixed(Policy::Undo)).0;
    // Under the undo policy, only transactions that went on as redo commit as redo.
    assert!(undo.stats.undo_commits > 0);
    assert!(undo.stats.commits - undo.stats.undo_commits <= undo.stats.undo_to_redo);
}

#[test]
fn auto_policy_follows_the_mix() {
    let w = World::new(vec![0usize]);
    let l = World::add(&w, &[], false);
    let d = World::add(&w, &[7u8; 8192], false);
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
    let mut c = Core::new(log, 8192, 1 << 20);
    let buf = [1u8; 100];
    // Writes only: redo.
    for i in 0..10 {
        // SAFETY: our own buffer.
        unsafe { c.write(&mut data, i * 100, buf.as_ptr(), 100, false) }.unwrap();
    }
    assert_eq!(c.mode(), Mode::Redo);
    c.commit(&mut data).unwrap();
    // Mostly reads now: the commit checkpoints, the next transaction is undo.
    for _ in 0..100 {
        c.note_read();
    }
    // SAFETY: our own buffer.
    unsafe { c.write(&mut data, 0, buf.as_ptr(), 100, false) }.unwrap();
    c.commit(&mut data).unwrap();
    // SAFETY: our own buffer.
    unsafe { c.write(&mut data, 50, buf.as_ptr(), 10, false) }.unwrap();
    assert_eq!(c.mode(), Mode::Undo);
    c.commit(&mut data).unwrap();
    assert!(c.stats.undo_commits >= 1);
    // Writes dominate again: back to redo.
    for i in 0..200 {
        // SAFETY: our own buffer.
        unsafe { c.write(&mut data, i * 10, buf.as_ptr(), 10, false) }.unwrap();
        if i % 16 == 15 {
            c.commit(&mut data).unwrap();
        }
    }
    assert_eq!(c.mode(), Mode::Redo);
    assert!(c.stats.switches >= 2, "{:?}", c.stats);
}
