//! Several processes on one set of files: some under libflex.so, some without, some forked
//! from each other (crates/flexio/tests/scripts/mp_worker.py), each running a random
//! sequence of O_APPEND writes (write, pwrite, writev), pwrites and read-backs of a range of
//! its own, a counter incremented under an fcntl lock, ftruncate + extending writes under a
//! lock, and fsyncs. Checked against what the kernel guarantees:
//! - every appended record is in the log exactly once, whole, never interleaved, and the
//!   log's size is the sum of the records;
//! - each worker's range holds exactly what it wrote (and read back at once);
//! - the counter equals the number of locked increments (every read sees the last write
//!   of any other process);
//! - sizes under the lock are the ones just set.
//!
//! Run after `cargo build --workspace` (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::{flexio, Stats, TestDir};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SLOT: usize = 1 << 16;
const NSLOTS: usize = 16;

fn worker_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/mp_worker.py")
}

fn libflex() -> PathBuf {
    std::env::var_os("FLEX_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| flexio().with_file_name("libflex.so"))
}

/// One worker: under flex or not, forking or not.
#[derive(Clone, Copy)]
struct W {
    flex: bool,
    fork: bool,
}

struct Run {
    dir: TestDir,
    reports: Vec<PathBuf>,
}

fn spawn(dir: &Path, i: usize, w: W, seed: u64, steps: u32, env: &[(&str, &str)]) -> Child {
    let out = dir.join(format!("report-{i}.json"));
    let mut c = Command::new("python3");
    c.arg(worker_py())
        .arg(dir.join("files"))
        .arg(format!("w{i}"))
        .arg(seed.to_string())
        .arg(steps.to_string())
        .arg(&out)
        .arg(if w.fork { "fork" } else { "nofork" })
        .arg(i.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if w.flex {
        c.env("LD_PRELOAD", libflex())
            .env("FLEX_PATHS", dir.join("files"))
            .env("FLEX_STATS", dir.join("stats"));
        for (k, v) in env {
            c.env(k, v);
        }
    }
    c.spawn().expect("spawn python3 worker")
}

fn run(name: &str, workers: &[W], seed: u64, steps: u32, env: &[(&str, &str)]) -> Run {
    assert!(workers.len() <= NSLOTS / 2);
    let dir = TestDir::new(name);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let children: Vec<Child> = workers
        .iter()
        .enumerate()
        .map(|(i, &w)| spawn(&dir.path, i, w, seed * 100 + i as u64, steps, env))
        .collect();
    let mut reports = Vec::new();
    for (i, mut c) in children.into_iter().enumerate() {
        let st = c.wait().expect("wait worker");
        assert!(st.success(), "{name}: worker {i} failed: {st}");
        reports.push(dir.path.join(format!("report-{i}.json")));
        if workers[i].fork {
            reports.push(dir.path.join(format!("report-{i}.json.c")));
        }
    }
    Run { dir, reports }
}

/// Parse the log: records `<tag:seq:n:body>\n`, each whole. Returns (tag, seq) -> count.
fn parse_log(log: &[u8]) -> Result<HashMap<(String, u64), u32>, String> {
    let mut seen = HashMap::new();
    let mut at = 0usize;
    while at < log.len() {
        let rest = &log[at..];
        if rest[0] != b'<' {
            return Err(format!(
                "byte {at}: expected a record, found {:?}",
                &rest[..rest.len().min(40)]
            ));
        }
        let mut parts = Vec::new();
        let mut p = 1;
        for _ in 0..3 {
            let q = rest[p..]
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| format!("byte {at}: torn record header"))?;
            parts.push(String::from_utf8_lossy(&rest[p..p + q]).into_owned());
            p += q + 1;
        }
        let seq: u64 = parts[1]
            .parse()
            .map_err(|_| format!("byte {at}: bad seq"))?;
        let n: usize = parts[2]
            .parse()
            .map_err(|_| format!("byte {at}: bad length"))?;
        if rest.len() < p + n + 2 {
            return Err(format!("byte {at}: record cut short"));
        }
        for (i, &b) in rest[p..p + n].iter().enumerate() {
            if b != 0x61 + ((seq as usize + i) % 26) as u8 {
                return Err(format!("byte {at}: record {}:{seq} torn at {i}", parts[0]));
            }
        }
        if &rest[p + n..p + n + 2] != b">\n" {
            return Err(format!(
                "byte {at}: record {}:{seq} not terminated",
                parts[0]
            ));
        }
        *seen.entry((parts[0].clone(), seq)).or_insert(0) += 1;
        at += p + n + 2;
    }
    Ok(seen)
}

fn check(name: &str, r: &Run) {
    let files = r.dir.join("files");
    let log = std::fs::read(files.join("log")).unwrap_or_default();
    let data = std::fs::read(files.join("data")).unwrap_or_default();
    let seen = parse_log(&log).unwrap_or_else(|e| panic!("{name}: log: {e}"));
    let mut incs = 0u64;
    let mut expect_size = 0usize;
    let mut nrecs = 0usize;
    for p in &r.reports {
        let v: Value = serde_json::from_slice(&std::fs::read(p).expect("report"))
            .unwrap_or_else(|e| panic!("{name}: report {}: {e}", p.display()));
        let tag = v["tag"].as_str().unwrap().to_string();
        let errs = v["errors"].as_array().unwrap();
        assert!(errs.is_empty(), "{name}: worker {tag}: {errs:?}");
        for rec in v["recs"].as_array().unwrap() {
            let seq = rec[0].as_u64().unwrap();
            let n = rec[1].as_u64().unwrap() as usize;
            let head = format!("<{tag}:{seq}:{n}:");
            expect_size += head.len() + n + 2;
            nrecs += 1;
            let c = seen.get(&(tag.clone(), seq)).copied().unwrap_or(0);
            assert_eq!(c, 1, "{name}: record {tag}:{seq} appears {c} times");
        }
        incs += v["incs"].as_u64().unwrap();
        let slot = v["slot"].as_u64().unwrap() as usize;
        let model = hex(v["model"].as_str().unwrap());
        let mut got = data.get(slot * SLOT..).unwrap_or(&[]).to_vec();
        got.resize(SLOT, 0);
        got.truncate(SLOT);
        if let Some(i) = (0..SLOT).find(|&i| got[i] != model[i]) {
            panic!("{name}: worker {tag}'s range differs at byte {i}");
        }
    }
    assert_eq!(seen.len(), nrecs, "{name}: records nobody wrote in the log");
    assert_eq!(
        log.len(),
        expect_size,
        "{name}: log size is not the sum of its records"
    );
    let c = data
        .get(NSLOTS * SLOT..NSLOTS * SLOT + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    assert_eq!(c, incs, "{name}: locked counter lost increments");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

const MIX: [W; 5] = [
    W {
        flex: true,
        fork: false,
    },
    W {
        flex: true,
        fork: true,
    },
    W {
        flex: false,
        fork: false,
    },
    W {
        flex: true,
        fork: false,
    },
    W {
        flex: false,
        fork: true,
    },
];

fn steps() -> u32 {
    std::env::var("FLEX_MP_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

fn seeds() -> u64 {
    std::env::var("FLEX_MP_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Different counts and mixes of workers per seed (2 to 6 processes, 2 to 8 with forks).
fn mixes(seed: u64) -> Vec<W> {
    let n = 2 + (seed as usize * 3) % 4;
    (0..n)
        .map(|i| MIX[(i + seed as usize) % MIX.len()])
        .collect()
}

#[test]
fn plain_mode() {
    for seed in 0..seeds() {
        let name = format!("mp-plain-{seed}");
        let r = run(&name, &mixes(seed), seed, steps(), &[]);
        check(&name, &r);
        let st = Stats::load(&r.dir.join("stats"));
        assert!(
            st.served("pwrite") > 0,
            "{name}: flex served no pwrite:\n{}",
            st.dump()
        );
    }
}

/// The size paths of DAX files (over-allocation under a write lease, trimmed when another
/// process opens the file) on this file system, as `FLEX_TEST_OVERALLOCATE=1` forces them.
#[test]
fn over_allocating() {
    for seed in 0..seeds() {
        let name = format!("mp-over-{seed}");
        let env = [("FLEX_TEST_OVERALLOCATE", "1")];
        let r = run(&name, &mixes(seed + 7), seed + 7, steps(), &env);
        check(&name, &r);
    }
}

/// One flex process appends alone (it gets the lease and over-allocates); another process
/// opens the log: it must see the exact size at once, and appends of both stay whole.
#[test]
fn lease_break_trims_before_the_other_open_returns() {
    let dir = TestDir::new("mp-lease");
    let f = dir.join("log");
    let script = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(3000):
    os.write(fd, b"<%06d>\n" % i)
print("ready", flush=True)
sys.stdin.readline()
for i in range(3000, 3100):
    os.write(fd, b"<%06d>\n" % i)
os.close(fd)
"#;
    let mut c = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&f)
        .env("LD_PRELOAD", libflex())
        .env("FLEX_PATHS", &dir.path)
        .env("FLEX_TEST_OVERALLOCATE", "1")
        .env("FLEX_STATS", dir.join("stats"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Over-allocated now (the kernel's size is the grown one)...
    assert!(std::fs::metadata(&f).unwrap().len() > 3000 * 9);
    // ...until another process opens it: the open waits for the trim.
    let other = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    assert_eq!(
        other.metadata().unwrap().len(),
        3000 * 9,
        "size seen by the next opener"
    );
    (&other).write_all(b"<999999>\n").unwrap();
    c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(c.wait().unwrap().success());
    let log = std::fs::read(&f).unwrap();
    assert_eq!(log.len(), 3101 * 9);
    let mut ids: Vec<&[u8]> = log.chunks(9).collect();
    assert!(ids
        .iter()
        .all(|r| r[0] == b'<' && r[7] == b'>' && r[8] == b'\n'));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3101);
    let st = Stats::load(&dir.join("stats"));
    assert!(
        st.dump().contains("lease broken"),
        "the writer never over-allocated under a lease:\n{}",
        st.dump()
    );
}

/// Failure-atomic mode shared by several processes, under each policy: the same
/// invariants as plain mode (every process sees the others' writes at once, appends are
/// whole and counted once, locked increments are never lost).
#[test]
fn atomic_mode_shared() {
    for (i, policy) in ["redo", "undo", "auto"].iter().enumerate() {
        let seed = 20 + i as u64;
        let name = format!("mp-atomic-{policy}");
        let env = [("FLEX_MODE", "atomic"), ("FLEX_ATOMIC_POLICY", policy)];
        let r = run(&name, &mixes(seed), seed, steps(), &env);
        check(&name, &r);
        let st = Stats::load(&r.dir.join("stats"));
        assert!(
            st.dump().contains("atomic: shared"),
            "{name}: no process shared the file in atomic mode:\n{}",
            st.dump()
        );
    }
}

/// Parse a committer's stdout: its writes per transaction and the last commit it reported.
fn committer_log(out: &str) -> (Vec<(u64, u64, u64, u8)>, u64) {
    let mut writes = Vec::new();
    let mut last = 0;
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["W", k, off, n, v] => writes.push((
                k.parse().unwrap(),
                off.parse().unwrap(),
                n.parse().unwrap(),
                v.parse().unwrap(),
            )),
            ["C", k] => last = k.parse().unwrap(),
            _ => {}
        }
    }
    (writes, last)
}

/// The committer's range after transaction `k`.
fn committer_state(writes: &[(u64, u64, u64, u8)], slot: u64, k: u64) -> Vec<u8> {
    let base = slot * (1 << 15);
    let mut v = vec![0u8; 1 << 15];
    for &(t, off, n, b) in writes {
        if t <= k {
            v[(off - base) as usize..(off - base + n) as usize].fill(b);
        }
    }
    v
}

/// kill -9 of one writer among three sharing a file in atomic mode, many times: after
/// the others finish and the next atomic open recovers the dead one's log, every other
/// writer's commits are there, and the killed one's range is exactly its last reported
/// commit (or the one in flight): its uncommitted writes, in place while it ran, are
/// rolled back.
#[test]
fn kill_one_atomic_writer_among_several() {
    let runs: u64 = std::env::var("FLEX_MP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    use std::io::Read;
    for run_i in 0..runs {
        let dir = TestDir::new("mp-kill");
        let f = dir.join("data");
        let victim = (run_i % 3) as usize;
        let mut kids: Vec<Child> = (0..3)
            .map(|slot| {
                Command::new("python3")
                    .arg(
                        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                            .join("tests/scripts/mp_committer.py"),
                    )
                    .arg(&f)
                    .arg(slot.to_string())
                    .arg((run_i * 10 + slot as u64).to_string())
                    .arg(if slot == victim { "400" } else { "40" })
                    .env("LD_PRELOAD", libflex())
                    .env("FLEX_PATHS", &dir.path)
                    .env("FLEX_MODE", "atomic")
                    .env(
                        "FLEX_ATOMIC_POLICY",
                        ["redo", "undo", "auto"][(run_i % 3) as usize],
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Let the victim commit a few transactions, then kill it mid-way.
        std::thread::sleep(std::time::Duration::from_millis(150 + 37 * run_i));
        let _ = kids[victim].kill();
        let mut outs = Vec::new();
        for (i, mut k) in kids.into_iter().enumerate() {
            let st = k.wait().unwrap();
            let mut s = String::new();
            k.stdout.take().unwrap().read_to_string(&mut s).unwrap();
            if i != victim {
                assert!(st.success(), "run {run_i}: writer {i} failed: {st}");
            }
            outs.push(s);
        }
        // The next atomic open recovers the dead writer's log.
        let g = flexio::OpenOptions::new()
            .read(true)
            .write(true)
            .atomic(true)
            .open(&f)
            .unwrap();
        let mut got = Vec::new();
        (&g).read_to_end(&mut got).unwrap();
        drop(g);
        got.resize(3 << 15, 0);
        for (slot, out) in outs.iter().enumerate() {
            let (writes, last) = committer_log(out);
            let have = &got[slot << 15..(slot + 1) << 15];
            let ok = |k| committer_state(&writes, slot as u64, k) == have;
            if slot == victim {
                assert!(
                    ok(last) || ok(last + 1),
                    "run {run_i}: the killed writer's range is neither commit {last} nor {}",
                    last + 1
                );
            } else {
                assert_eq!(last, 40, "run {run_i}: writer {slot} did not finish");
                assert!(
                    ok(40),
                    "run {run_i}: writer {slot}'s commits are not all there"
                );
            }
        }
    }
}
