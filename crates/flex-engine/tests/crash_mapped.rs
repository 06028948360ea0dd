//! Crash tests of the plain (non-atomic) cache-line data path, under the persistence
//! simulator of `flex_engine::persist::sim_map` (build with `--features sim`).
//!
//! A child process writes a file through the engine (appends, overwrites, writes that
//! extend the file or leave a gap) with the file's mapping simulated as DAX with
//! MAP_SYNC, over-allocated with a trailer as on DAX. At every drain (fence) the simulator
//! records what a crash there may leave. The parent builds, for each point, the images of
//! a crash with none, the written-back, all, and random subsets of the lines in flight,
//! runs flex's recovery on each, and checks the cache-line promise: every write that
//! returned is there, whole, with the exact size; the write in flight is absent, or
//! present in part where the size allows (never garbage, never a size no write gave).

use flex_engine::persist::sim_map::{self, CrashPoint};
use flex_engine::posix::Route;
use std::ffi::CString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One write of the workload: `len` bytes at `off` (`None`: at the end).
#[derive(Clone, Copy, Debug)]
struct Op {
    off: Option<u64>,
    len: usize,
}

fn ops(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut size = 0u64;
    (0..n)
        .map(|_| {
            let len = match rng.u32(0..10) {
                0..=3 => rng.usize(1..64),
                4..=7 => rng.usize(64..4200),
                _ => rng.usize(4200..9000),
            };
            let op = match rng.u32(0..10) {
                0..=4 => Op { off: None, len },
                5..=7 if size > 0 => Op {
                    off: Some(rng.u64(0..size)),
                    len,
                },
                8 => Op {
                    off: Some(size + rng.u64(1..3000)),
                    len,
                },
                _ => Op {
                    off: Some(size.saturating_sub(rng.u64(0..100))),
                    len,
                },
            };
            let at = op.off.unwrap_or(size);
            size = size.max(at + len as u64);
            op
        })
        .collect()
}

/// The byte write `k` stores at `off`: never zero, different per write.
fn val(k: usize, off: u64) -> u8 {
    ((k as u64 * 131 + off * 7) % 255 + 1) as u8
}

const SEED: u64 = 0x5eed_ca11;
const OPS: usize = 160;

fn child(dir: &Path) {
    let path = dir.join("data");
    let out = std::fs::File::create(dir.join("points")).unwrap();
    sim_map::watch(out);
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let flags =
        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | flex_engine::O_FLEX;
    let fd = flex_engine::posix::open(libc::AT_FDCWD, &p, flags, 0o644)
        .served()
        .expect("open");
    let mut size = 0u64;
    for (k, op) in ops(SEED, OPS).iter().enumerate() {
        let at = op.off.unwrap_or(size);
        let buf: Vec<u8> = (0..op.len as u64).map(|i| val(k, at + i)).collect();
        // SAFETY: our own buffer of `op.len` bytes.
        let n = unsafe { flex_engine::posix::pwrite(fd, buf.as_ptr(), buf.len(), at as i64) }
            .served()
            .expect("pwrite");
        assert_eq!(n, op.len);
        size = size.max(at + n as u64);
        sim_map::set_epoch(k as u64 + 1);
    }
    assert!(
        flex_engine::posix::granularity(fd) == Some(flex_engine::Granularity::CacheLine),
        "the simulated mapping is cache-line"
    );
    sim_map::finish();
    flex_engine::posix::close(fd).served().expect("close");
}

/// The test binary runs itself as the child (a process of its own: the engine, its
/// leases and its threads start there, and a crash point's file is the child's).
#[test]
#[ignore = "the child of crash_points_recover_to_a_returned_state"]
fn crash_child() {
    if let Some(dir) = std::env::var_os("FLEX_SIM_CHILD") {
        child(Path::new(&dir));
    }
}

/// The engine must serve every call of the workload (an O_FLEX file).
trait Served<T> {
    fn served(self) -> flex_engine::sys::Res<T>;
}

impl<T> Served<T> for Route<T> {
    fn served(self) -> flex_engine::sys::Res<T> {
        match self {
            Route::Served(r) => r,
            Route::Pass(p) => panic!("passed to the kernel: {}", p.why()),
        }
    }
}

fn check(
    img_len: usize,
    got: &[u8],
    base: &[u8],
    flight: Option<(usize, u64, usize)>,
) -> Result<(), String> {
    let next = flight.map_or(base.len(), |(_, o, l)| base.len().max(o as usize + l));
    if got.len() != base.len() && got.len() != next {
        return Err(format!(
            "size {} after recovery (image {img_len}): returned writes give {}, the one in flight {next}",
            got.len(),
            base.len()
        ));
    }
    for (i, &b) in got.iter().enumerate() {
        let old = base.get(i).copied().unwrap_or(0);
        let new = flight
            .and_then(|(k, o, l)| (i as u64 >= o && i < o as usize + l).then(|| val(k, i as u64)));
        if b != old && Some(b) != new {
            return Err(format!(
                "byte {i} is {b}: returned writes give {old}, the write in flight {new:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn crash_points_recover_to_a_returned_state() {
    let tmp = tempfile::Builder::new()
        .prefix("flex-sim")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let dir: PathBuf = tmp.path().into();
    let st = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
        .env("FLEX_SIM_CHILD", &dir)
        .env("FLEX_TEST_OVERALLOCATE", "1")
        .env("FLEX_GROW_MIN", "64k")
        .env("FLEX_ADOPT_AFTER", "0")
        .status()
        .unwrap();
    assert!(st.success(), "the writer failed: {st}");
    let points = CrashPoint::decode_all(&std::fs::read(dir.join("points")).unwrap());
    let ops = ops(SEED, OPS);
    assert!(
        points.len() > OPS / 2,
        "only {} crash points for {OPS} writes",
        points.len()
    );
    let path = dir.join("data");
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut model: Vec<u8> = Vec::new();
    let mut applied = 0usize;
    let (mut images, mut trimmed, mut partial) = (0usize, 0usize, 0usize);
    for (pi, p) in points.iter().enumerate() {
        while applied < p.epoch as usize {
            let op = ops[applied];
            let at = op.off.unwrap_or(model.len() as u64) as usize;
            if model.len() < at + op.len {
                model.resize(at + op.len, 0);
            }
            for i in 0..op.len {
                model[at + i] = val(applied, (at + i) as u64);
            }
            applied += 1;
        }
        let flight = ops
            .get(applied)
            .map(|op| (applied, op.off.unwrap_or(model.len() as u64), op.len));
        // None, the written-back, all, and two random subsets of the lines in flight.
        for v in 0..5 {
            let img = p.image(|_, wb| match v {
                0 => false,
                1 => wb,
                2 => true,
                _ => rng.bool(),
            });
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(img.len() as u64).unwrap();
            f.write_all_at(&img, 0).unwrap();
            drop(f);
            match flex_engine::trailer::recover_path(&cpath).expect("recover") {
                flex_engine::trailer::Recovery::Trimmed { .. } => trimmed += 1,
                flex_engine::trailer::Recovery::Clean => {}
                r => panic!("point {pi}: recovery says {r:?} with no process alive"),
            }
            let got = std::fs::read(&path).unwrap();
            if got.len() != model.len() || got != model {
                partial += 1;
            }
            if let Err(e) = check(img.len(), &got, &model, flight) {
                panic!(
                    "point {pi} (after {} returned writes, variant {v}, {} lines in flight): {e}",
                    p.epoch,
                    p.lines.len()
                );
            }
            images += 1;
        }
    }
    assert!(
        trimmed > 0,
        "no image was over-allocated: the trailer path did not run"
    );
    eprintln!(
        "crash_mapped: {} crash points, {images} images recovered ({trimmed} trimmed, {partial} with the write in flight partly there)",
        points.len()
    );
}
