//! The protocol against the persistence simulator: random workloads of writes, appends,
//! truncates and fsyncs; a crash at every fence, with no, all, and random subsets of the
//! lines still in flight; recovery on the durable image; the result must be exactly the
//! last committed state of a model (or, for a crash inside a commit, the state it commits).

use super::log::Log;
use super::protocol::{recover, Batch, Core, CoreStats, Policy};
use crate::persist::sim::{SimDev, World};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Acceptable model states (indices into the state list) for a crash at this moment.
type Tag = Vec<usize>;

const INO: u64 = 7;

struct Run {
    states: Vec<Vec<u8>>,
    points: Vec<crate::persist::sim::CrashPoint<Tag>>,
    fences: u64,
    commits: u64,
    early: u64,
    checkpoints: u64,
    stats: CoreStats,
}

/// How the workload's transactions log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pol {
    Fixed(Policy),
    /// The policy changes at random moments (redo, undo, auto with the workload's reads
    /// counted): transactions switch modes at run time.
    Switch,
    /// Redo, and at random moments another process opens the file: the file goes shared
    /// ([`Core::go_shared`]: a redo transaction in progress goes on as undo, in place);
    /// then back to redo now and then, so conversions happen many times per run.
    Shared,
}

/// The background applier, simulated: a batch taken from the core and the next step to
/// apply, interleaved with the foreground operations at random.
struct Bg {
    batch: Option<(Batch, usize)>,
    /// A background checkpoint synced the data file at this epoch; its reset is pending.
    synced: Option<u64>,
    batches: u64,
    resets: u64,
}

impl Bg {
    /// Finish the batch in flight (the foreground waits for it).
    fn drain<D: super::protocol::DataDev>(&mut self, core: &mut Core<SimDev<Tag>>, data: &mut D) {
        if let Some((b, i)) = self.batch.take() {
            for k in i..=b.ops.len() {
                // SAFETY: a batch taken and not finished.
                unsafe { b.step(data, k) }.expect("apply step");
            }
            core.finish_batch(b, Ok(()));
            self.batches += 1;
        }
    }

    /// One random move of the applier.
    fn act<D: super::protocol::DataDev>(
        &mut self,
        r: &mut Rng,
        core: &mut Core<SimDev<Tag>>,
        data: &mut D,
    ) {
        match r.below(5) {
            0 => {
                if self.batch.is_none() {
                    self.batch = core.take_batch().map(|b| (b, 0));
                }
            }
            1 | 2 => {
                let done = match &mut self.batch {
                    Some((b, i)) => {
                        let end = (*i + 1 + r.below(3) as usize).min(b.ops.len() + 1);
                        for k in *i..end {
                            // SAFETY: a batch taken and not finished.
                            unsafe { b.step(data, k) }.expect("apply step");
                        }
                        *i = end;
                        end > b.ops.len()
                    }
                    None => false,
                };
                if done {
                    if let Some((b, _)) = self.batch.take() {
                        core.finish_batch(b, Ok(()));
                        self.batches += 1;
                    }
                }
            }
            3 => {
                // The applier catches up (finishes the batch, applies the rest), then
                // checkpoints if the file is idle.
                self.drain(core, data);
                self.batch = core.take_batch().map(|b| (b, 0));
                self.drain(core, data);
                if core.idle_checkpoint() {
                    // A newer sync replaces a pending one.
                    data.sync().expect("sync");
                    self.synced = Some(core.applied);
                    if r.below(2) == 0 {
                        // The reset right after the sync (else after later foreground ops).
                        self.act_reset(core);
                    }
                }
            }
            _ => {
                // Often late: foreground operations (commits, applied batches) come
                // between the sync and the reset, which must then refuse.
                if r.below(4) == 0 {
                    self.act_reset(core);
                }
            }
        }
    }

    fn act_reset(&mut self, core: &mut Core<SimDev<Tag>>) {
        if let Some(epoch) = self.synced.take() {
            if core.reset_after_sync(epoch).expect("reset") {
                self.resets += 1;
            }
        }
    }
}

/// Run one random workload on the simulator, recording a crash point at every fence.
fn workload(seed: u64, page: bool, ops: usize, bound: u64) -> Run {
    workload_mode(seed, page, ops, bound, false, Pol::Fixed(Policy::Redo)).0
}

/// `bg`: commits only log; a simulated background applier applies batches step by step
/// and checkpoints idle files, interleaved at random with the foreground.
fn workload_mode(
    seed: u64,
    page: bool,
    ops: usize,
    bound: u64,
    bg: bool,
    pol: Pol,
) -> (Run, u64, u64) {
    let mut r = Rng(seed | 1);
    let init: Vec<u8> = (0..(r.below(9000) as usize))
        .map(|_| r.next() as u8)
        .collect();
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
        if pol == Pol::Switch && r.below(8) == 0 {
            core.policy = [Policy::Redo, Policy::Undo, Policy::Auto][r.below(3) as usize];
        }
        if pol == Pol::Shared {
            if r.below(7) == 0 {
                if core.inflight() {
                    app.drain(&mut core, &mut data);
                }
                core.go_shared(&mut data).expect("go_shared");
                assert_eq!(core.policy, Policy::Undo);
                if core.stats.commits != before {
                    committed = pending;
                }
            } else if r.below(9) == 0 {
                core.end_shared(Policy::Redo);
            }
        }
        match r.below(10) {
            0..=3 => {
                let off = r.below(cur.len() as u64 + 3000) as usize;
                let big = r.below(4) == 0;
                let len = 1 + r.below(if big { 9000 } else { 700 }) as usize;
                let buf: Vec<u8> = (0..len).map(|_| r.next() as u8 | 1).collect();
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
                let len = 1 + r.below(1500) as usize;
                let buf: Vec<u8> = (0..len).map(|_| r.next() as u8 | 1).collect();
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
                let len = r.below(cur.len() as u64 + 2000) as usize;
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
            for _ in 0..r.below(5) {
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
        let reads = if pol == Pol::Switch && r.below(3) == 0 {
            // A read-mostly phase: auto picks undo for the next transactions.
            30
        } else {
            1
        };
        for _ in 0..reads {
            core.note_read();
        }
        if r.below(3) == 0 {
            // Reads see this process's own uncommitted writes.
            let mut got = vec![0u8; cur.len() + 10];
            // SAFETY: our own buffer.
            let n = unsafe { core.read(&data, 0, got.as_mut_ptr(), got.len()) }.expect("read");
            assert_eq!(&got[..n], &cur[..], "read-your-writes (seed {seed})");
            let off = r.below(cur.len() as u64 + 1);
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

/// Recover a crash image; returns the data file's contents and the recovery's own crash
/// points (when `capture`).
fn recover_image(
    img: &[Vec<u8>],
    page: bool,
    capture: bool,
) -> (Vec<u8>, Vec<crate::persist::sim::CrashPoint<Tag>>) {
    let w = World::new(vec![]);
    let l = World::add(&w, &img[0], page);
    let d = World::add(&w, &img[1], page);
    w.borrow_mut().capture = capture;
    let mut data = SimDev {
        w: w.clone(),
        dev: d,
        page,
    };
    let (_log, rep) = recover(
        SimDev {
            w: w.clone(),
            dev: l,
            page,
        },
        INO,
        &mut data,
        1000,
    )
    .expect("recover");
    let out = w.borrow().contents(d);
    assert_eq!(rep.size, out.len() as u64);
    let pts = core::mem::take(&mut w.borrow_mut().points);
    (out, pts)
}

fn check_run(
    seed: u64,
    page: bool,
    ops: usize,
    bound: u64,
    subsets: usize,
) -> (usize, usize, usize) {
    check_run_mode(
        seed,
        page,
        ops,
        bound,
        subsets,
        false,
        Pol::Fixed(Policy::Redo),
    )
}

fn check_run_mode(
    seed: u64,
    page: bool,
    ops: usize,
    bound: u64,
    subsets: usize,
    bg: bool,
    pol: Pol,
) -> (usize, usize, usize) {
    let (run, _, _) = workload_mode(seed, page, ops, bound, bg, pol);
    assert!(run.commits > 0);
    let mut r = Rng(seed.wrapping_mul(31) | 1);
    let (mut images, mut nested) = (0usize, 0usize);
    for (pi, p) in run.points.iter().enumerate() {
        let n = p.inflight.len();
        let mut masks: Vec<Vec<bool>> = vec![vec![false; n], vec![true; n]];
        for _ in 0..subsets {
            masks.push((0..n).map(|_| r.below(2) == 0).collect());
        }
        for (mi, m) in masks.iter().enumerate() {
            let img = p.image(|i| m[i]);
            let nest = pi % 4 == 0 && mi >= 1;
            let (got, rpts) = recover_image(&img, page, nest);
            images += 1;
            let ok = p.tag.iter().any(|&k| run.states[k] == got);
            if !ok {
                let sc = super::log::scan(&img[0], INO);
                eprintln!(
                    "scan: {:?}",
                    sc.map(|s| (
                        s.gen,
                        s.txns
                            .iter()
                            .map(|t| (t.0.clone(), t.1))
                            .collect::<Vec<_>>(),
                        s.tail_records
                    ))
                );
                eprintln!(
                    "states: {:?}",
                    run.states.iter().map(|s| s.len()).collect::<Vec<_>>()
                );
                eprintln!("tag {:?} data img len {}", p.tag, img[1].len());
                for (k, st) in run.states.iter().enumerate() {
                    if *st == got {
                        eprintln!("matches state {k}");
                    }
                }
            }
            assert!(
                ok,
                "seed {seed} page {page}: crash point {pi} mask {mi}: recovered {} bytes, acceptable sizes {:?}",
                got.len(),
                p.tag.iter().map(|&k| run.states[k].len()).collect::<Vec<_>>()
            );
            // A crash during recovery is recovered too, to the same state.
            for q in &rpts {
                let k = q.inflight.len();
                for mask in [
                    vec![false; k],
                    vec![true; k],
                    (0..k).map(|_| r.below(2) == 0).collect(),
                ] {
                    let img2 = q.image(|i| mask[i]);
                    let (again, _) = recover_image(&img2, page, false);
                    assert_eq!(
                        again, got,
                        "seed {seed}: crash during recovery of point {pi}"
                    );
                    nested += 1;
                }
            }
        }
    }
    assert!(run.fences as usize >= run.points.len());
    (run.points.len(), images, nested)
}

/// Add up the (fences crashed, images recovered, crashes inside recovery) of `runs`,
/// report them under `label`, and require more than `min` fences.
fn crash_sweep(label: &str, min: usize, runs: impl IntoIterator<Item = (usize, usize, usize)>) {
    let tot = runs
        .into_iter()
        .fold((0, 0, 0), |t, r| (t.0 + r.0, t.1 + r.1, t.2 + r.2));
    eprintln!(
        "{label}: {} fences crashed, {} images recovered, {} crashes inside recovery",
        tot.0, tot.1, tot.2
    );
    assert!(tot.0 > min);
}

/// Each seed with cache-line (DAX) and page-cache persistence.
fn seeds_both_grains(n: u64) -> impl Iterator<Item = (u64, bool)> {
    (1..=n).flat_map(|seed| [(seed, false), (seed, true)])
}

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
    assert_eq!(c.mode(), super::protocol::Mode::Redo);
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
    assert_eq!(c.mode(), super::protocol::Mode::Undo);
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
    assert_eq!(c.mode(), super::protocol::Mode::Redo);
    assert!(c.stats.switches >= 2, "{:?}", c.stats);
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

#[test]
fn hash_detects_a_changed_bit() {
    // Every single-bit change of a record header changes its sum.
    let h = super::log::rec_header(1, 9, 3, 4096, 512);
    let base = super::log::hash(1, &h[..40]);
    for bit in 0..320 {
        let mut c = h;
        c[bit / 8] ^= 1 << (bit % 8);
        assert_ne!(super::log::hash(1, &c[..40]), base, "bit {bit}");
    }
    assert_ne!(super::log::hash(1, &h[..40]), super::log::hash(2, &h[..40]));
}
