//! Random workloads of writes, appends, truncates, reads and fsyncs on the persistence
//! simulator, with the model's states and a crash point recorded at every fence.

use super::applier::Bg;
use crate::atomic::log::Log;
use crate::atomic::protocol::{Core, CoreStats, Policy};
use crate::persist::sim::{SimDev, World};

/// Acceptable model states (indices into the state list) for a crash at this moment.
pub(super) type Tag = Vec<usize>;

pub(super) const INO: u64 = 7;

pub(super) struct Run {
    pub(super) states: Vec<Vec<u8>>,
    pub(super) points: Vec<crate::persist::sim::CrashPoint<Tag>>,
    pub(super) fences: u64,
    pub(super) commits: u64,
    pub(super) early: u64,
    pub(super) checkpoints: u64,
    pub(super) stats: CoreStats,
}

/// How the workload's transactions log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pol {
    Fixed(Policy),
    /// The policy changes at random moments (redo, undo, auto with the workload's reads
    /// counted): transactions switch modes at run time.
    Switch,
    /// Redo, and at random moments another process opens the file: the file goes shared
    /// ([`Core::go_shared`]: a redo transaction in progress goes on as undo, in place);
    /// then back to redo now and then, so conversions happen many times per run.
    Shared,
}

/// Run one random workload on the simulator, recording a crash point at every fence.
pub(super) fn workload(seed: u64, page: bool, ops: usize, bound: u64) -> Run {
    workload_mode(seed, page, ops, bound, false, Pol::Fixed(Policy::Redo)).0
}

/// `bg`: commits only log; a simulated background applier applies batches step by step
/// and checkpoints idle files, interleaved at random with the foreground.
pub(super) fn workload_mode(
    seed: u64,
    page: bool,
    ops: usize,
    bound: u64,
    bg: bool,
    pol: Pol,
) -> (Run, u64, u64) {
    let mut r = fastrand::Rng::with_seed(seed);
    let init: Vec<u8> = (0..r.usize(..9000)).map(|_| r.u8(..)).collect();
    let w = World::new(vec![0usize]);
    let ldev = World::add(&w, &[], page);
    let ddev = World::add(&w, &init, page);
    let mut data = SimDev {
        w: w.clone(),
        dev: ddev,
        page,
    };
    let log = Log::create(
        SimDev {
            w: w.clone(),
            dev: ldev,
            page,
        },
        INO,
        0,
    )
    .expect("create");
    let mut core = Core::new(log, init.len() as u64, bound);
    core.background = bg;
    core.policy = match pol {
        Pol::Fixed(p) => p,
        Pol::Switch => Policy::Auto,
        Pol::Shared => Policy::Redo,
    };
    // Idle checkpoints at any log size: more background resets in short workloads.
    core.idle_min = if seed.is_multiple_of(2) { 0 } else { bound / 4 };
    let mut app = Bg {
        batch: None,
        synced: None,
        batches: 0,
        resets: 0,
    };
    let mut states = vec![init.clone()];
    let mut cur = init;
    let mut committed = 0usize;
    w.borrow_mut().capture = true;
    for _ in 0..ops {
        states.push(cur.clone());
        let pending = states.len() - 1;
        w.borrow_mut().tag = vec![committed, pending];
        let before = core.stats.commits;
        if pol == Pol::Switch && r.u32(..8) == 0 {
            core.policy = [Policy::Redo, Policy::Undo, Policy::Auto][r.usize(..3)];
        }
        if pol == Pol::Shared {
            if r.u32(..7) == 0 {
                if core.inflight() {
                    app.drain(&mut core, &mut data);
                }
                core.go_shared(&mut data).expect("go_shared");
                assert_eq!(core.policy, Policy::Undo);
                if core.stats.commits != before {
                    committed = pending;
                }
            } else if r.u32(..9) == 0 {
                core.end_shared(Policy::Redo);
            }
        }
        match r.u32(..10) {
            0..=3 => {
                let off = r.usize(..cur.len() + 3000);
                let big = r.u32(..4) == 0;
                let len = 1 + r.usize(..if big { 9000 } else { 700 });
                let buf: Vec<u8> = (0..len).map(|_| r.u8(..) | 1).collect();
                if core.inflight() && core.needs_room(len as u64) {
                    app.drain(&mut core, &mut data);
                }
                // SAFETY: our own buffer.
                let (n, end) =
                    unsafe { core.write(&mut data, off as u64, buf.as_ptr(), len, false) }
                        .expect("write");
                assert_eq!((n, end), (len, (off + len) as u64));
                if cur.len() < off + len {
                    cur.resize(off + len, 0);
                }
                cur[off..off + len].copy_from_slice(&buf);
            }
            4 | 5 => {
                let len = 1 + r.usize(..1500);
                let buf: Vec<u8> = (0..len).map(|_| r.u8(..) | 1).collect();
                if core.inflight() && core.needs_room(len as u64) {
                    app.drain(&mut core, &mut data);
                }
                // SAFETY: our own buffer.
                let (_, end) =
                    unsafe { core.write(&mut data, 0, buf.as_ptr(), len, true) }.expect("append");
                assert_eq!(end as usize, cur.len() + len);
                cur.extend_from_slice(&buf);
            }
            6 => {
                let len = r.usize(..cur.len() + 2000);
                if core.inflight() && core.needs_room(0) {
                    app.drain(&mut core, &mut data);
                }
                core.truncate(&mut data, len as u64).expect("truncate");
                cur.resize(len, 0);
            }
            _ => {
                core.commit(&mut data).expect("commit");
                if bg && core.wants_checkpoint() {
                    // The foreground checkpoints past half the bound, after the batch.
                    app.drain(&mut core, &mut data);
                    core.checkpoint(&mut data).expect("checkpoint");
                }
            }
        }
        if bg {
            for _ in 0..r.u32(..5) {
                app.act(&mut r, &mut core, &mut data);
            }
        }
        if core.stats.commits != before {
            committed = pending;
        }
        // A commit that follows the op's logging (an fsync) commits the state after it.
        if core.stats.commits != before && !core.dirty() {
            states.push(cur.clone());
            committed = states.len() - 1;
        }
        let reads = if pol == Pol::Switch && r.u32(..3) == 0 {
            // A read-mostly phase: auto picks undo for the next transactions.
            30
        } else {
            1
        };
        for _ in 0..reads {
            core.note_read();
        }
        if r.u32(..3) == 0 {
            // Reads see this process's own uncommitted writes.
            let mut got = vec![0u8; cur.len() + 10];
            // SAFETY: our own buffer.
            let n = unsafe { core.read(&data, 0, got.as_mut_ptr(), got.len()) }.expect("read");
            assert_eq!(&got[..n], &cur[..], "read-your-writes (seed {seed})");
            let off = r.u64(..cur.len() as u64 + 1);
            let mut got = vec![0u8; 777];
            // SAFETY: our own buffer.
            let n = unsafe { core.read(&data, off, got.as_mut_ptr(), got.len()) }.expect("read");
            let want = &cur[off as usize..(off as usize + 777).min(cur.len())];
            assert_eq!(&got[..n], want, "partial read at {off} (seed {seed})");
        }
    }
    states.push(cur.clone());
    let last = states.len() - 1;
    w.borrow_mut().tag = vec![committed, last];
    core.commit(&mut data).expect("final commit");
    if bg {
        // Close: the foreground waits for the batch, applies the rest and checkpoints.
        app.drain(&mut core, &mut data);
        w.borrow_mut().tag = vec![last];
        core.checkpoint(&mut data).expect("close checkpoint");
        let mut got = vec![0u8; cur.len() + 1];
        // SAFETY: our own buffer.
        let n = unsafe { core.read(&data, 0, got.as_mut_ptr(), got.len()) }.expect("read");
        assert_eq!(
            &got[..n],
            &cur[..],
            "read after close checkpoint (seed {seed})"
        );
        assert_eq!(
            w.borrow().contents(ddev),
            cur,
            "data file at close (seed {seed})"
        );
    }
    let mut g = w.borrow_mut();
    g.tag = vec![last];
    g.fence();
    let run = Run {
        states,
        points: core::mem::take(&mut g.points),
        fences: g.fences,
        commits: core.stats.commits,
        early: core.stats.early_commits,
        checkpoints: core.stats.checkpoints,
        stats: core.stats,
    };
    (run, app.batches, app.resets)
}
