//! Failure-atomic mode at process level: a writer in atomic mode (random writes, appends,
//! truncates, an fsync every few operations) is killed with SIGKILL at random moments;
//! recovery (by `flexio::recover_atomic`, or by the next atomic open) must leave exactly
//! the state of the last fsync the writer completed (or of the one in progress).
//!
//! `FLEX_CRASH_RUNS` sets the number of kills (default 50; the long run is
//! `FLEX_CRASH_RUNS=1000 cargo test -p flexio --release --test atomic_crash`).

use flexio::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "common/run.rs"]
mod run;

enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
    Fsync,
}

/// `len` bytes of the writer's stream.
fn bytes(r: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    r.fill(&mut b);
    b
}

/// The writer's operations, reproducible from the seed; `size` is the model's size.
fn next_op(r: &mut fastrand::Rng, i: u64, size: u64) -> Op {
    if i % 8 == 7 {
        return Op::Fsync;
    }
    match r.u64(..10) {
        0..=6 => {
            let off = r.u64(..size + 4096).min(512 << 10);
            let len = r.usize(1..=8192);
            Op::Write(off, bytes(r, len))
        }
        7 | 8 => {
            let len = r.usize(1..=4096);
            Op::Write(size, bytes(r, len))
        }
        _ => Op::Truncate(r.u64(..size + 1000)),
    }
}

const COMMITS: u64 = 300;

/// The model: the file's contents after each fsync (index 0: empty, before any).
fn model(seed: u64) -> Vec<Vec<u8>> {
    let mut r = fastrand::Rng::with_seed(seed);
    let mut cur: Vec<u8> = Vec::new();
    let mut states = vec![Vec::new()];
    let mut i = 0;
    while (states.len() as u64) <= COMMITS + 1 {
        match next_op(&mut r, i, cur.len() as u64) {
            Op::Write(off, b) => {
                let end = off as usize + b.len();
                if cur.len() < end {
                    cur.resize(end, 0);
                }
                cur[off as usize..end].copy_from_slice(&b);
            }
            Op::Truncate(l) => cur.resize(l as usize, 0),
            Op::Fsync => states.push(cur.clone()),
        }
        i += 1;
    }
    states
}

/// The writer (run in a child process by `kill_9_writers_and_recover`).
#[test]
#[ignore = "child process of kill_9_writers_and_recover"]
fn writer_child() {
    let Ok(spec) = std::env::var("ATOMIC_CRASH_CHILD") else {
        return;
    };
    let mut it = spec.split(':');
    let path = it.next().unwrap().to_string();
    let seed: u64 = it.next().unwrap().parse().unwrap();
    let flag = it.next() == Some("flag");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .atomic(flag)
        .open(&path)
        .unwrap();
    let reads: u64 = std::env::var("ATOMIC_CRASH_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut r = fastrand::Rng::with_seed(seed);
    let mut size = 0u64;
    let mut commits = 0;
    let mut i = 0;
    let mut buf = [0u8; 512];
    while commits < COMMITS {
        // A read-mostly phase every other 64 operations (FLEX_ATOMIC_POLICY=auto then
        // switches between undo and redo).
        if i % 128 < 64 {
            for k in 0..reads {
                let _ = f.read_at(&mut buf, (i * 977 + k * 4099) % (size + 1));
            }
        }
        match next_op(&mut r, i, size) {
            Op::Write(off, b) => {
                f.write_all_at(&b, off).unwrap();
                size = size.max(off + b.len() as u64);
            }
            Op::Truncate(l) => {
                f.set_len(l).unwrap();
                size = l;
            }
            Op::Fsync => {
                f.sync_data().unwrap();
                commits += 1;
                println!("C {commits}");
            }
        }
        i += 1;
    }
    // Keep the file open (uncommitted writes pending) until killed.
    f.write_all_at(b"uncommitted", 0).unwrap();
    std::thread::sleep(Duration::from_secs(30));
}

/// The log of `p`, at its file system's mount root (docs/atomic.md, "The log").
fn log_of(p: &Path) -> std::path::PathBuf {
    flex_engine::atomic::site::log_location(p).unwrap_or_else(|| p.with_extension("no-such-log"))
}

#[test]
fn kill_9_writers_and_recover() {
    let runs: u64 = std::env::var("FLEX_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed_1234 ^ runs);
    let (mut tail_states, mut replayed) = (0, 0);
    for run in 0..runs {
        let seed = rng.u64(..) >> 1;
        let path = dir.path().join(format!("f{run}"));
        let flag = run % 2 == 0;
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "ATOMIC_CRASH_CHILD",
            format!(
                "{}:{seed}:{}",
                path.display(),
                if flag { "flag" } else { "env" }
            ),
        )
        .env("FLEX_ATOMIC_LOG", "256k")
        // Redo, undo, and the measured switch between them, in turn.
        .env(
            "FLEX_ATOMIC_POLICY",
            ["redo", "undo", "auto"][run as usize % 3],
        )
        .env("ATOMIC_CRASH_READS", if run % 3 == 2 { "6" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if !flag {
            cmd.env("FLEX_MODE", "atomic");
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let target = rng.u64(1..=COMMITS + 20);
        let mut last = 0u64;
        let mut line = String::new();
        while last < target.min(COMMITS) {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(k) = line.strip_prefix("C ") {
                last = k.trim().parse().unwrap();
            }
        }
        std::thread::sleep(Duration::from_micros(rng.u64(..3000)));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        for l in rest.lines() {
            if let Some(k) = l.strip_prefix("C ") {
                last = k.trim().parse().unwrap();
            }
        }
        assert!(last >= 1, "run {run}: the writer never committed");
        let states = model(seed);
        // Recover: by flexio::recover_atomic (twice: idempotent), or by an atomic open.
        let got = if run % 4 < 2 {
            let r = flexio::recover_atomic(&path).unwrap();
            if r.is_some_and(|r| r.txns > 0) {
                replayed += 1;
            }
            assert!(
                flexio::recover_atomic(&path).unwrap().is_none(),
                "log left after recovery"
            );
            std::fs::read(&path).unwrap()
        } else {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .atomic(true)
                .open(&path)
                .unwrap();
            let n = f.len().unwrap() as usize;
            let mut v = vec![0u8; n];
            f.read_exact_at(&mut v, 0).unwrap();
            drop(f);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                v,
                "run {run}: file after close differs from reads"
            );
            v
        };
        assert!(!log_of(&path).exists(), "run {run}: log not removed");
        let ok_last = got == states[last as usize];
        let ok_next = states.get(last as usize + 1).is_some_and(|s| *s == got);
        assert!(
            ok_last || ok_next,
            "run {run} seed {seed}: recovered {} bytes; last reported commit {last} has {} bytes",
            got.len(),
            states[last as usize].len()
        );
        if !ok_last {
            tail_states += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("{runs} kill -9 runs verified ({replayed} replayed a log, {tail_states} ended at the in-flight fsync)");
}

/// Committed transactions reach the data file in the background (the applier thread):
/// another reader (here the kernel path) sees them once applied. Waits for that, up to a
/// generous deadline (a correctness check, not a timing one).
fn applied_eventually(p: &std::path::Path, want: &[u8]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = std::fs::read(p).unwrap();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed bytes never reached the data file: {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// In one process, alone with the file (it holds the write lease): reads, the size and
/// truncations see its uncommitted writes at once; a commit applies them. The moment
/// another description opens the file (here a plain read, then a second atomic open), the
/// lease breaks and the file goes shared before that open returns: the opener reads
/// every write, committed or not, as the kernel would show it; from then on writes and
/// O_TRUNC are in place (undo-logged). Close commits; the last close removes the log.
#[test]
fn writes_reach_the_file_at_commit_or_when_shared() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let p = dir.path().join("a");
    std::fs::write(&p, b"0123456789").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .atomic(true)
        .open(&p)
        .unwrap();
    assert!(log_of(&p).exists(), "no log while open");
    f.write_all_at(b"abc", 8).unwrap();
    let mut b = vec![0u8; 11];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"01234567abc");
    assert_eq!(f.len().unwrap(), 11);
    f.sync_data().unwrap();
    applied_eventually(&p, b"01234567abc");
    f.set_len(4).unwrap();
    f.write_all_at(b"Z", 6).unwrap();
    assert_eq!(f.len().unwrap(), 7);
    let mut b = vec![9u8; 7];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"0123\0\0Z");
    // Another opener (this read's open) sees the uncommitted state, in place.
    assert_eq!(std::fs::read(&p).unwrap(), b"0123\0\0Z");
    // O_TRUNC through a second description: in place too now.
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .atomic(true)
        .open(&p)
        .unwrap();
    assert_eq!(g.len().unwrap(), 0);
    assert_eq!(f.len().unwrap(), 0);
    assert_eq!(std::fs::read(&p).unwrap(), b"");
    g.write_all_at(b"new", 0).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    drop(g); // a close commits
    assert!(log_of(&p).exists());
    drop(f); // the last close removes the log
    assert!(!log_of(&p).exists(), "log left after the last close");
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
}
