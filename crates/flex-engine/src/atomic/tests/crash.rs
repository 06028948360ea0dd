//! Crash checking: every crash point of a workload recovered with no, all and random
//! subsets of the lines in flight, each result one of the states the model allows, and
//! crashes inside recovery recovered to the same state.

use super::workload::{workload_mode, Pol, Tag, INO};
use crate::atomic::log;
use crate::atomic::protocol::{recover, Policy};
use crate::persist::sim::{SimDev, World};

/// Recover a crash image; returns the data file's contents and the recovery's own crash
/// points (when `capture`).
pub(super) fn recover_image(
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

pub(super) fn check_run(
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

pub(super) fn check_run_mode(
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
    let mut r = fastrand::Rng::with_seed(seed.wrapping_mul(31));
    let (mut images, mut nested) = (0usize, 0usize);
    for (pi, p) in run.points.iter().enumerate() {
        let n = p.inflight.len();
        let mut masks: Vec<Vec<bool>> = vec![vec![false; n], vec![true; n]];
        for _ in 0..subsets {
            masks.push((0..n).map(|_| r.bool()).collect());
        }
        for (mi, m) in masks.iter().enumerate() {
            let img = p.image(|i| m[i]);
            let nest = pi % 4 == 0 && mi >= 1;
            let (got, rpts) = recover_image(&img, page, nest);
            images += 1;
            let ok = p.tag.iter().any(|&k| run.states[k] == got);
            if !ok {
                let sc = log::scan(&img[0], INO);
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
                    (0..k).map(|_| r.bool()).collect(),
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
pub(super) fn crash_sweep(
    label: &str,
    min: usize,
    runs: impl IntoIterator<Item = (usize, usize, usize)>,
) {
    let tot = runs
        .into_iter()
        .fold((0, 0, 0), |t, r| (t.0 + r.0, t.1 + r.1, t.2 + r.2));
    eprintln!(
        "{label}: {} fences crashed, {} images recovered, {} crashes inside recovery",
        tot.0, tot.1, tot.2
    );
    assert!(tot.0 > min);
}

/// Each seed with cache-line (DAX) and page-cache persistence; `FLEX_CRASH_SEEDS=N` runs
/// N seeds instead of `n` (long runs).
pub(super) fn seeds_both_grains(n: u64) -> impl Iterator<Item = (u64, bool)> {
    let n = std::env::var("FLEX_CRASH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    (1..=n).flat_map(|seed| [(seed, false), (seed, true)])
}
