//! Failure-atomic mode against the bugs observed in Libnvmmio (ATC '20; see the "Libnvmmio"
//! section of /work/shared/README.md): one workload each, asserting the correct behaviour.
//! In-process through `flexio::File` (atomic open), or through libflex.so under
//! `flexio run` with `FLEX_MODE=atomic` (python3 scripts). Each test first checks that the
//! file really is in atomic mode (its log exists while it is open).
//!
//! Build the workspace first (`cargo build --workspace`: libflex.so beside flexio).

#[path = "common/run.rs"]
mod run;

use flexio::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The log of the data file `p`: in the flex directory at its file system's mount root
/// (docs/atomic.md, "The log"); a path that does not exist when `p` does not.
fn log_of(p: &Path) -> PathBuf {
    flex_engine::atomic::site::log_location(p).unwrap_or_else(|| p.with_extension("no-such-log"))
}

/// The log location of older versions, beside the data file.
fn legacy_log_of(p: &Path) -> PathBuf {
    p.with_file_name(format!(
        ".{}.flexlog",
        p.file_name().unwrap().to_string_lossy()
    ))
}

/// The names in directory `d` (what the test process, without flex, sees).
fn names_in(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn atomic_rw(p: &Path) -> flexio::File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .atomic(true)
        .open(p)
        .unwrap();
    assert!(log_of(p).exists(), "not in atomic mode: no log");
    f
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    run::noise(len, seed)
}

/// Run a python script (after the prelude [`PY`]) under `flexio run --paths dir` with
/// FLEX_MODE=atomic; the script asserts its own expectations (exit status 0) and gets the
/// directory as argv[1].
fn py_atomic(dir: &Path, body: &str) -> std::process::Output {
    run::require("python3", "python3");
    let script = format!("{PY}{body}");
    let out = Command::new(run::flexio())
        .args(["run", "--paths"])
        .arg(dir)
        .args(["--", "python3", "-c", &script])
        .arg(dir)
        .env("FLEX_MODE", "atomic")
        .current_dir(dir)
        .output()
        .expect("spawn flexio run");
    assert!(
        out.status.success(),
        "script failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Python prelude: the directory, a log check, helpers.
const PY: &str = r#"
import os, sys
d = sys.argv[1]
def log(name):
    # In the flex directory at the mount root of the file's file system.
    try:
        st = os.stat(os.path.join(d, name))
    except FileNotFoundError:
        return os.path.join(d, "." + name + ".no-such-log")
    r = os.path.realpath(d)
    while True:
        up = os.path.dirname(r)
        if up == r or os.stat(up).st_dev != st.st_dev:
            break
        r = up
    return os.path.join(r, ".flex-atomic", "%d.log" % st.st_ino)
def atomic(name):
    assert os.path.exists(log(name)), "not in atomic mode: no log for " + name
def content(name):
    with open(os.path.join(d, name), "rb") as f:
        return f.read()
"#;

/// Libnvmmio ignored O_APPEND: every write must go to the end, whatever the offset.
#[test]
fn o_append_is_honoured() {
    let t = run::TestDir::new("atomic-append");
    std::fs::write(t.path.join("a"), b"0123").unwrap();
    py_atomic(
        &t.path,
        r#"
p = os.path.join(d, "a")
fd = os.open(p, os.O_RDWR | os.O_APPEND)
atomic("a")
os.lseek(fd, 0, os.SEEK_SET)
assert os.write(fd, b"xy") == 2
os.lseek(fd, 1, os.SEEK_SET)
assert os.write(fd, b"z") == 1
assert os.fstat(fd).st_size == 7, os.fstat(fd).st_size
assert os.pread(fd, 16, 0) == b"0123xyz"
os.fsync(fd)
os.close(fd)
assert content("a") == b"0123xyz", content("a")
"#,
    );
    assert_eq!(std::fs::read(t.path.join("a")).unwrap(), b"0123xyz");
    assert!(!log_of(&t.path.join("a")).exists());
}

/// Libnvmmio: a write spanning its log blocks returned the wrong count and grew the file.
#[test]
fn write_spanning_blocks_returns_its_count_and_exact_size() {
    let t = run::TestDir::new("atomic-span");
    let p = t.path.join("s");
    let f = atomic_rw(&p);
    let mut model = pattern(1, 4096);
    assert_eq!(f.write_at(&model, 0).unwrap(), 4096);
    // 6000 bytes at 3000: crosses the 4 KiB block the first write established.
    let b = pattern(2, 6000);
    assert_eq!(f.write_at(&b, 3000).unwrap(), 6000);
    model.resize(9000, 0);
    model[3000..9000].copy_from_slice(&b);
    assert_eq!(f.len().unwrap(), 9000);
    // One write across the 2 MiB boundary.
    let c = pattern(3, 10_000);
    let at = (2 << 20) - 5000;
    assert_eq!(f.write_at(&c, at as u64).unwrap(), 10_000);
    model.resize(at + 10_000, 0);
    model[at..].copy_from_slice(&c);
    assert_eq!(f.len().unwrap(), model.len() as u64);
    f.sync_data().unwrap();
    assert_eq!(f.len().unwrap(), model.len() as u64);
    drop(f);
    assert_eq!(std::fs::read(&p).unwrap(), model);
}

/// Libnvmmio undid an ftruncate at close.
#[test]
fn ftruncate_survives_close() {
    let t = run::TestDir::new("atomic-trunc");
    let p = t.path.join("t");
    let f = atomic_rw(&p);
    f.write_all_at(&pattern(4, 10_000), 0).unwrap();
    f.sync_data().unwrap();
    f.set_len(100).unwrap();
    assert_eq!(f.len().unwrap(), 100);
    drop(f); // close commits the truncation
    assert_eq!(std::fs::read(&p).unwrap(), pattern(4, 10_000)[..100]);
    // Committed by fsync, then close.
    let f = atomic_rw(&p);
    f.set_len(10).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 10);
    // Extension by ftruncate reads as zeros and stays.
    let f = atomic_rw(&p);
    f.set_len(5000).unwrap();
    drop(f);
    let got = std::fs::read(&p).unwrap();
    assert_eq!(got.len(), 5000);
    assert_eq!(&got[..10], &pattern(4, 10)[..]);
    assert!(got[10..].iter().all(|&b| b == 0));
}

/// Libnvmmio exited the process on a seek past the end of file.
#[test]
fn seek_past_eof_then_write_leaves_a_hole() {
    let t = run::TestDir::new("atomic-seek");
    let p = t.path.join("k");
    let mut f = atomic_rw(&p);
    (&f).write_all(b"head").unwrap();
    assert_eq!(f.seek(SeekFrom::Start(3 << 20)).unwrap(), 3 << 20);
    assert_eq!(f.seek(SeekFrom::End(100)).unwrap(), 104);
    assert_eq!(f.seek(SeekFrom::Current(1 << 20)).unwrap(), 104 + (1 << 20));
    (&f).write_all(b"tail").unwrap();
    let size = 104 + (1 << 20) + 4;
    assert_eq!(f.len().unwrap(), size);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    (&f).read_to_end(&mut all).unwrap();
    assert_eq!(all.len() as u64, size);
    assert_eq!(&all[..4], b"head");
    assert!(all[4..all.len() - 4].iter().all(|&b| b == 0));
    drop(f);
    let got = std::fs::read(&p).unwrap();
    assert_eq!(got, all);
}

/// Libnvmmio exited the process on any failed open; none may leave a log behind.
#[test]
fn failed_opens_return_errors_and_leave_no_log() {
    let t = run::TestDir::new("atomic-failopen");
    std::fs::write(t.path.join("exists"), b"x").unwrap();
    std::fs::create_dir(t.path.join("sub")).unwrap();
    py_atomic(
        &t.path,
        r#"
import errno
def fails(path, flags, err):
    try:
        os.close(os.open(os.path.join(d, path), flags, 0o644))
    except OSError as e:
        assert e.errno == err, (path, e)
        return
    raise AssertionError("open of " + path + " succeeded")
fails("missing", os.O_RDWR, errno.ENOENT)
fails("exists", os.O_RDWR | os.O_CREAT | os.O_EXCL, errno.EEXIST)
fails("sub", os.O_RDWR, errno.EISDIR)
fails("nodir/x", os.O_RDWR | os.O_CREAT, errno.ENOENT)
assert not os.path.exists(log("missing"))
assert not os.path.exists(log("exists"))
assert not os.path.exists(log("sub"))
# The process goes on and atomic mode still works.
fd = os.open(os.path.join(d, "exists"), os.O_RDWR)
atomic("exists")
os.pwrite(fd, b"yz", 1)
os.close(fd)
assert content("exists") == b"xyz"
print("alive")
"#,
    );
    let names = names_in(&t.path);
    assert_eq!(names, ["exists", "sub"], "flex left a file: {names:?}");
    assert!(!log_of(&t.path.join("exists")).exists(), "log left");
    assert_eq!(std::fs::read(t.path.join("exists")).unwrap(), b"xyz");
}

/// Libnvmmio failed O_WRONLY opens (mmap EACCES) and left a 1 MiB junk file.
#[test]
fn write_only_opens_work_and_leave_exact_files() {
    let t = run::TestDir::new("atomic-wronly");
    std::fs::write(t.path.join("old"), b"abcdef").unwrap();
    py_atomic(
        &t.path,
        r#"
fd = os.open(os.path.join(d, "new"), os.O_WRONLY | os.O_CREAT, 0o644)
atomic("new")
assert os.write(fd, b"hello") == 5
assert os.fstat(fd).st_size == 5
os.fsync(fd)
assert os.write(fd, b" world") == 6
os.close(fd)
fd = os.open(os.path.join(d, "old"), os.O_WRONLY)
atomic("old")
assert os.pwrite(fd, b"XY", 2) == 2
os.close(fd)
fd = os.open(os.path.join(d, "trunc"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
atomic("trunc")
os.write(fd, b"t" * 3000)
os.close(fd)
"#,
    );
    assert_eq!(std::fs::read(t.path.join("new")).unwrap(), b"hello world");
    assert_eq!(std::fs::read(t.path.join("old")).unwrap(), b"abXYef");
    assert_eq!(
        std::fs::read(t.path.join("trunc")).unwrap(),
        vec![b't'; 3000]
    );
    for n in ["new", "old", "trunc"] {
        assert!(!log_of(&t.path.join(n)).exists(), "log of {n} left");
    }
}

/// Libnvmmio left the preallocated size when a process exited without closing. Exit is a
/// commit point here: the file holds every write, at its exact size, and no log remains.
#[test]
fn exit_without_close_commits_at_the_exact_size() {
    let t = run::TestDir::new("atomic-exit");
    for (name, exit) in [("e1", "sys.exit(0)"), ("e2", "os._exit(0)")] {
        py_atomic(
            &t.path,
            &format!(
                "
fd = os.open(os.path.join(d, '{name}'), os.O_RDWR | os.O_CREAT, 0o644)
atomic('{name}')
os.pwrite(fd, b'a' * 5000, 0)
os.fsync(fd)
os.pwrite(fd, b'b' * 1000, 4500)
{exit}
"
            ),
        );
        let mut want = vec![b'a'; 4500];
        want.extend(vec![b'b'; 1000]);
        assert_eq!(std::fs::read(t.path.join(name)).unwrap(), want, "{exit}");
        assert!(
            !log_of(&t.path.join(name)).exists(),
            "log left after {exit}"
        );
    }
}

/// Libnvmmio's redo mode returned blocks swapped: every block reads back at its own offset
/// (uncommitted, committed-not-yet-applied, applied, and after reopening).
#[test]
fn blocks_read_back_in_place() {
    let t = run::TestDir::new("atomic-swap");
    let p = t.path.join("b");
    let f = atomic_rw(&p);
    let blocks = 24usize;
    let mut model = vec![0u8; blocks * 4096];
    let check = |f: &flexio::File, model: &[u8], when: &str| {
        for i in 0..blocks {
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, (i * 4096) as u64).unwrap();
            assert!(
                b == model[i * 4096..(i + 1) * 4096],
                "block {i} wrong {when}"
            );
        }
    };
    for round in 0..6u64 {
        // Blocks in a scrambled order, some twice per transaction.
        for k in 0..blocks + 6 {
            let i = (k * 7 + round as usize * 5) % blocks;
            let b = pattern(round * 1000 + k as u64 + 1, 4096);
            f.write_all_at(&b, (i * 4096) as u64).unwrap();
            model[i * 4096..(i + 1) * 4096].copy_from_slice(&b);
        }
        check(&f, &model, "before fsync");
        f.sync_data().unwrap();
        check(&f, &model, "after fsync");
    }
    drop(f);
    assert!(std::fs::read(&p).unwrap() == model, "file after close");
    let f = atomic_rw(&p);
    check(&f, &model, "after reopen");
}

/// Libnvmmio's redo mode lost the writes after the last fsync: close commits them.
#[test]
fn writes_after_the_last_fsync_are_kept_at_close() {
    let t = run::TestDir::new("atomic-lost");
    let p = t.path.join("l");
    let f = atomic_rw(&p);
    f.write_all_at(&pattern(5, 8192), 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"after", 100).unwrap();
    f.write_all_at(b"grow", 9000).unwrap();
    let mut b = [0u8; 5];
    f.read_exact_at(&mut b, 100).unwrap();
    assert_eq!(&b, b"after");
    drop(f);
    let mut want = pattern(5, 8192);
    want[100..105].copy_from_slice(b"after");
    want.resize(9000, 0);
    want.extend_from_slice(b"grow");
    assert!(std::fs::read(&p).unwrap() == want);
}

/// Libnvmmio aliased blocks past 2 MiB (its leaf tables): blocks 2 MiB, 4 MiB and 1 GiB
/// apart are distinct.
#[test]
fn no_aliasing_past_2_mib() {
    let t = run::TestDir::new("atomic-alias");
    let p = t.path.join("x");
    let f = atomic_rw(&p);
    let offs = [
        0u64,
        4096,
        2 << 20,
        (2 << 20) + 4096,
        4 << 20,
        (1 << 30) + 4096,
    ];
    for (k, &o) in offs.iter().enumerate() {
        f.write_all_at(&pattern(k as u64 + 10, 4096), o).unwrap();
    }
    let check = |f: &flexio::File, when: &str| {
        for (k, &o) in offs.iter().enumerate() {
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, o).unwrap();
            assert!(b == pattern(k as u64 + 10, 4096), "block at {o} {when}");
        }
        let mut b = vec![1u8; 4096];
        f.read_exact_at(&mut b, 8192).unwrap();
        assert!(b.iter().all(|&x| x == 0), "hole at 8192 {when}");
    };
    check(&f, "uncommitted");
    f.sync_data().unwrap();
    check(&f, "committed");
    drop(f);
    let f = std::fs::File::open(&p).unwrap();
    for (k, &o) in offs.iter().enumerate() {
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, o).unwrap();
        assert!(
            b == pattern(k as u64 + 10, 4096),
            "block at {o} in the file"
        );
    }
}

/// The background applier is per process: a forked child (threads do not survive fork)
/// gets its own at its first commit. The test reads the child's file through the kernel
/// while the child keeps it open after an fsync, without a further commit: only the
/// child's applier can put the bytes there. (The child must not fork itself: a fork hands
/// its atomic files to the kernel, which applies them.)
#[test]
fn forked_child_gets_its_own_applier() {
    use std::io::{BufRead, BufReader};
    run::require("python3", "python3");
    let t = run::TestDir::new("atomic-fork");
    let script = format!(
        "{PY}{}",
        r#"
a = os.path.join(d, "a")
fa = os.open(a, os.O_RDWR | os.O_CREAT, 0o644)
atomic("a")
os.pwrite(fa, b"parent", 0)
os.fsync(fa)  # the parent's applier exists now
pid = os.fork()
if pid == 0:
    code = 3
    try:
        fb = os.open(os.path.join(d, "b"), os.O_RDWR | os.O_CREAT, 0o644)
        atomic("b")
        want = bytes(range(256)) * 256
        os.pwrite(fb, want, 0)
        os.fsync(fb)
        print("ready", flush=True)
        sys.stdin.readline()
        assert os.pread(fb, len(want) + 1, 0) == want
        os.close(fb)
        code = 0
    finally:
        os._exit(code)
_, st = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(st) == 0, st
os.pwrite(fa, b"PARENT", 0)
os.close(fa)
assert content("a") == b"PARENT"
"#
    );
    let mut child = Command::new(run::flexio())
        .args(["run", "--paths"])
        .arg(&t.path)
        .args(["--", "python3", "-c", &script])
        .arg(&t.path)
        .env("FLEX_MODE", "atomic")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flexio run");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "child did not get ready");
    let b = t.path.join("b");
    let want: Vec<u8> = (0..256 * 256).map(|i| i as u8).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read(&b).unwrap() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the child's committed bytes never reached the file (no applier in the child?)"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success(), "script failed");
    assert_eq!(std::fs::read(t.path.join("a")).unwrap(), b"PARENT");
    assert!(std::fs::read(&b).unwrap() == want);
    for n in ["a", "b"] {
        assert!(!log_of(&t.path.join(n)).exists(), "log of {n} left");
    }
}

/// Every test above again, with undo logging (`FLEX_ATOMIC_POLICY=undo`): this binary
/// re-run in a child process whose engine reads that policy at start.
#[test]
fn every_regression_under_the_undo_policy() {
    if std::env::var_os("FLEX_ATOMIC_POLICY").is_some() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "every_regression_under", "--test-threads=2"])
        .env("FLEX_ATOMIC_POLICY", "undo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "under undo:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: usize = text
        .split("test result: ok. ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 12, "{text}");
}

/// The policies through libflex.so: a read-mostly program gets undo transactions under
/// `auto`, a write-only one redo; forced policies are obeyed. FLEX_STATS counts the
/// commits of each kind; the file holds exactly what was written.
#[test]
fn policies_are_obeyed_and_auto_follows_the_mix() {
    run::require("python3", "python3");
    let script = r#"
import os, sys
d, reads = sys.argv[1], int(sys.argv[2])
fd = os.open(os.path.join(d, "f"), os.O_RDWR | os.O_CREAT, 0o644)
want = bytearray(64 * 4096)
os.pwrite(fd, bytes(want), 0)
os.fsync(fd)
for i in range(200):
    for k in range(reads):
        os.pread(fd, 4096, ((i * 7 + k) % 64) * 4096)
    b = bytes([i % 251 + 1]) * 4096
    at = ((i * 13) % 64) * 4096
    os.pwrite(fd, b, at)
    want[at:at + 4096] = b
    if i % 8 == 7:
        os.fsync(fd)
os.close(fd)
with open(os.path.join(d, "f"), "rb") as f:
    assert f.read() == bytes(want)
"#;
    // (policy, reads per write, mostly undo, only one kind)
    for (policy, reads, undo, only) in [
        ("auto", 0, false, true),
        ("auto", 10, true, false),
        ("undo", 0, true, true),
        ("redo", 10, false, true),
    ] {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let stats = dir.path().join("stats.json");
        let out = Command::new(run::flexio())
            .args(["run", "--paths"])
            .arg(dir.path())
            .args(["--", "python3", "-c", script])
            .arg(dir.path())
            .arg(reads.to_string())
            .env("FLEX_MODE", "atomic")
            .env("FLEX_ATOMIC_POLICY", policy)
            .env("FLEX_STATS", &stats)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{policy}/{reads}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st = std::fs::read_to_string(&stats).unwrap();
        let v: serde_json::Value = st
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["exe"].as_str().is_some_and(|e| e.contains("python")))
            .unwrap_or_else(|| panic!("no python stats in {st}"));
        let n = |k: &str| v["atomic"][k].as_u64().unwrap_or(0);
        let (u, r) = (n("undo_commits"), n("redo_commits"));
        assert!(u + r >= 26, "{policy}/{reads}: {st}");
        assert_eq!(u > r, undo, "{policy}/{reads}: {st}");
        if only {
            assert_eq!(u.min(r), 0, "{policy}/{reads}: {st}");
        }
    }
}

/// truncate(2) by path of a file this process has open in atomic mode is part of the
/// transaction: killed before the next fsync, the file comes back with its old contents;
/// after an fsync, truncated. (The kernel's own truncate would have been durable at once,
/// outside the transaction.)
#[test]
fn truncate_by_path_is_transactional() {
    run::require("python3", "python3");
    let t = run::TestDir::new("atomic-truncate-path");
    for (name, sync_after, want_len) in [("t1", false, 20000usize), ("t2", true, 3000)] {
        let script = format!(
            "{PY}
import signal
p = os.path.join(d, '{name}')
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
atomic('{name}')
os.pwrite(fd, b'x' * 20000, 0)
os.fsync(fd)
os.truncate(p, 3000)
assert os.stat(p).st_size == 3000
assert os.fstat(fd).st_size == 3000
assert len(os.pread(fd, 50000, 0)) == 3000
if {sync}:
    os.fsync(fd)
os.kill(os.getpid(), signal.SIGKILL)
",
            sync = if sync_after { "True" } else { "False" }
        );
        let out = Command::new(run::flexio())
            .args(["run", "--paths"])
            .arg(&t.path)
            .args(["--", "python3", "-c", &script])
            .arg(&t.path)
            .env("FLEX_MODE", "atomic")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{name}: the script was to be killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = t.path.join(name);
        flexio::recover_atomic(&p).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), want_len, "{name}: size after recovery");
        assert!(got.iter().all(|&b| b == b'x'), "{name}: contents");
        assert!(!log_of(&p).exists(), "{name}: log left");
    }
}

/// Two processes: while a writer process has uncommitted writes (redo: in its log), a
/// second atomic writer opens the file too (no EBUSY): its open breaks the first one's
/// lease, and the first process puts its writes in place (still undo-logged) before the
/// open returns, so every other opener, atomic or plain, reads them as the kernel would
/// show them. The second writer's own commit is there after both exit, and so is the
/// first one's (its exit commits).
#[test]
fn a_second_process_shares_the_file() {
    run::require("python3", "python3");
    let t = run::TestDir::new("atomic-two-procs");
    let p = t.path.join("shared");
    let script = format!(
        "{PY}
import sys
fd = os.open(os.path.join(d, 'shared'), os.O_RDWR | os.O_CREAT, 0o644)
atomic('shared')
os.pwrite(fd, b'C' * 3000, 0)
os.fsync(fd)
os.pwrite(fd, b'U' * 1000, 2500)
print('ready', flush=True)
sys.stdin.readline()
"
    );
    let mut child = Command::new(run::flexio())
        .args(["run", "--paths"])
        .arg(&t.path)
        .args(["--", "python3", "-c", &script])
        .arg(&t.path)
        .env("FLEX_MODE", "atomic")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = run::first_line(&mut child.stdout.take().unwrap());
    assert_eq!(line.trim(), "ready");
    let committed = vec![b'C'; 3000];
    let mut current = committed.clone();
    current[2500..].fill(b'U');
    current.resize(3500, b'U');
    let _ = committed;
    // A second atomic writer opens (the first goes shared), sees the first one's writes,
    // and commits its own.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .atomic(true)
        .open(&p)
        .expect("a second atomic writer opens the file");
    let mut got = Vec::new();
    (&f).read_to_end(&mut got).unwrap();
    assert!(got == current, "second writer saw {} bytes", got.len());
    f.write_all_at(b"S", 100).unwrap();
    f.sync_all().unwrap();
    current[100] = b'S';
    // An atomic reader and a plain reader: the same bytes.
    let r = OpenOptions::new().read(true).atomic(true).open(&p).unwrap();
    let mut got = Vec::new();
    (&r).read_to_end(&mut got).unwrap();
    assert!(got == current, "atomic reader saw {} bytes", got.len());
    drop(r);
    assert!(std::fs::read(&p).unwrap() == current, "plain reader");
    drop(f);
    // The first writer exits (commit at exit): both commits are in the file.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let f = atomic_rw(&p);
    let mut got = Vec::new();
    (&f).read_to_end(&mut got).unwrap();
    assert!(
        got == current,
        "after the first writer's exit: {} bytes",
        got.len()
    );
}

/// Threads on one atomic file: writers overwrite disjoint and overlapping ranges (each
/// write one uniform byte value, ranges 2 x 3000 bytes at multiples of 3000, so each
/// overlaps its neighbours by half), readers read those ranges meanwhile; every
/// 3000-byte half a reader sees is uniform: per write all old or all new bytes, never a
/// mix. The writers commit now and then; the file after close holds uniform halves too.
#[test]
fn threads_see_each_write_all_old_or_all_new() {
    const B: usize = 3000;
    const SLOTS: usize = 24;
    let t = run::TestDir::new("atomic-threads");
    let p = t.path.join("t");
    let f = std::sync::Arc::new(atomic_rw(&p));
    f.write_all_at(&vec![0u8; B * (SLOTS + 1)], 0).unwrap();
    f.sync_all().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hs = Vec::new();
    for w in 0..2u64 {
        let f = f.clone();
        hs.push(std::thread::spawn(move || {
            let mut r = fastrand::Rng::with_seed(w + 1);
            for i in 0..3000u64 {
                let k = r.usize(..SLOTS);
                // Writer 0: any slot (overlapping); writer 1 also writes single halves.
                let len = if w == 1 && i % 3 == 0 { B } else { 2 * B };
                let v = (1 + w * 100 + i % 97) as u8;
                f.write_all_at(&vec![v; len], (k * B) as u64).unwrap();
                if i % 50 == 49 {
                    f.sync_data().unwrap();
                }
            }
        }));
    }
    let mut rs = Vec::new();
    for r in 0..2u64 {
        let (f, stop) = (f.clone(), stop.clone());
        rs.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 2 * B];
            let mut n = 0u64;
            let mut k = r as usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k = (k + 7) % SLOTS;
                f.read_exact_at(&mut buf, (k * B) as u64).unwrap();
                for (h, half) in buf.chunks(B).enumerate() {
                    assert!(
                        half.iter().all(|&b| b == half[0]),
                        "torn: slot {k} half {h} mixes {} and {}",
                        half[0],
                        half.iter().find(|&&b| b != half[0]).unwrap()
                    );
                }
                n += 1;
            }
            n
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = rs.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(reads > 100, "readers made only {reads} reads");
    drop(f);
    let got = std::fs::read(&p).unwrap();
    assert_eq!(got.len(), B * (SLOTS + 1));
    for (i, half) in got.chunks(B).enumerate() {
        assert!(
            half.iter().all(|&b| b == half[0]),
            "after close: half {i} torn"
        );
    }
}

/// flex keeps two descriptors per atomic file (the log, a read-write duplicate of the
/// data): closing "every other descriptor" (closerange, close in a loop) must not close
/// them, or a later commit would write through whatever file reuses the number.
#[test]
fn closing_every_other_descriptor_spares_flex_own() {
    let t = run::TestDir::new("atomic-private-fds");
    py_atomic(
        &t.path,
        r#"
import errno
p = os.path.join(d, "a")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
atomic("a")
assert os.write(fd, b"hello ") == 6
os.closerange(fd + 1, 1 << 16)
for n in range(fd + 1, 1 << 12):
    try:
        os.close(n)
    except OSError as e:
        assert e.errno == errno.EBADF, e
other = os.open(os.path.join(d, "other"), os.O_RDWR | os.O_CREAT, 0o644)
assert os.write(fd, b"world") == 5
os.fsync(fd)
assert os.write(other, b"x") == 1
os.close(other)
os.close(fd)
assert content("a") == b"hello world", content("a")
assert content("other") == b"x", content("other")
"#,
    );
    assert!(!log_of(&t.path.join("a")).exists());
}

/// The last description of an atomic file may be read-only: its close commits what a
/// read-write one wrote (it once tried to apply through the read-only descriptor and
/// lost the change), and O_RDONLY|O_TRUNC truncates inside the transaction.
#[test]
fn a_read_only_last_close_commits() {
    let t = run::TestDir::new("atomic-ro-close");
    std::fs::write(t.path.join("a"), b"old contents").unwrap();
    py_atomic(
        &t.path,
        r#"
p = os.path.join(d, "a")
w = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
atomic("a")
os.ftruncate(w, 3)
assert os.pwrite(w, b"new", 0) == 3
r = os.open(p, os.O_RDONLY)
os.close(w)
assert os.pread(r, 16, 0) == b"new"
os.fsync(r)
t = os.open(p, os.O_RDONLY | os.O_TRUNC)
assert os.fstat(r).st_size == 0
os.close(t)
w = os.open(p, os.O_WRONLY)
assert os.write(w, b"last") == 4
os.close(w)
os.close(r)
assert content("a") == b"last", content("a")
"#,
    );
    assert_eq!(std::fs::read(t.path.join("a")).unwrap(), b"last");
    assert!(!log_of(&t.path.join("a")).exists());
}

/// A dup2 by the application onto one of flex's own descriptor numbers moves flex's
/// descriptor first: commits keep going to the right file, the application's file gets
/// nothing of it.
#[test]
fn dup2_onto_flex_own_descriptors_moves_them() {
    let t = run::TestDir::new("atomic-dup2-private");
    py_atomic(
        &t.path,
        r#"
p = os.path.join(d, "a")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
atomic("a")
assert os.write(fd, b"hello ") == 6
own = []
for n in os.listdir("/proc/self/fd"):
    n = int(n)
    if n == fd:
        continue
    try:
        target = os.readlink("/proc/self/fd/%d" % n)
    except OSError:
        continue
    if target in (p, log("a")):
        own.append(n)
assert len(own) == 2, own
other = os.open(os.path.join(d, "other"), os.O_RDWR | os.O_CREAT, 0o644)
for n in own:
    assert os.dup2(other, n) == n
assert os.write(fd, b"world") == 5
os.fsync(fd)
assert os.write(own[0], b"x") == 1
os.close(fd)
for n in own:
    os.close(n)
os.close(other)
assert content("a") == b"hello world", content("a")
assert content("other") == b"x", content("other")
"#,
    );
    assert!(!log_of(&t.path.join("a")).exists());
}

/// Flex's files never show in the program's directories: while a file is open in atomic
/// mode (its log exists), listing its directory, by `readdir` (os.listdir, os.scandir) or
/// the raw `getdents64`, gives the program's names only; so does the mount root (here
/// /dev/shm's, where the flex directory is), and a fresh tmpfs mount where the program
/// works at the root itself.
#[test]
fn flex_files_never_show_in_the_programs_directories() {
    const LIST: &str = r#"
import ctypes, stat
libc = ctypes.CDLL(None, use_errno=True)
libc.getdents64.restype = ctypes.c_ssize_t
libc.getdents64.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
def raw_names(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(256)
    out = []
    while True:
        n = libc.getdents64(fd, buf, 256)
        assert n >= 0, ctypes.get_errno()
        if n == 0:
            break
        raw = buf.raw[:n]
        i = 0
        while i < n:
            reclen = int.from_bytes(raw[i + 16:i + 18], "little")
            name = raw[i + 19:i + reclen].split(b"\0")[0].decode()
            if name not in (".", ".."):
                out.append(name)
            i += reclen
    os.close(fd)
    return sorted(out)
def listings(path):
    return [sorted(os.listdir(path)), sorted(e.name for e in os.scandir(path)), raw_names(path)]
def check(where, root):
    fd = os.open(os.path.join(where, "f"), os.O_RDWR | os.O_CREAT, 0o644)
    atomic_at(where, "f")
    os.write(fd, b"data")
    for l in listings(where):
        assert l == ["f"], (where, l)
    for l in listings(root):
        assert ".flex-atomic" not in l, (root, l)
    # The directory itself can still be looked up by name (it is only not listed).
    assert stat.S_ISDIR(os.stat(os.path.join(root, ".flex-atomic")).st_mode)
    os.close(fd)
    for l in listings(where):
        assert l == ["f"], (where, l)
def atomic_at(where, name):
    global d
    old, d = d, where
    try:
        atomic(name)
    finally:
        d = old
"#;
    let t = run::TestDir::new("atomic-hidden");
    let root = mount_root(&t.path);
    py_atomic(
        &t.path,
        &format!(
            "{LIST}\ncheck(d, {:?})\nprint('ok')\n",
            root.to_str().unwrap()
        ),
    );
    assert_eq!(names_in(&t.path), ["f"]);
    // The program at a mount root: a fresh tmpfs (needs mount(2); skipped without it).
    let m = t.path.join("mnt");
    std::fs::create_dir(&m).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "flex-test"])
        .arg(&m)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping the fresh-mount part: mount -t tmpfs failed");
        return;
    }
    let r = std::panic::catch_unwind(|| {
        py_atomic(&m, &format!("{LIST}\ncheck(d, d)\nprint('ok')\n"));
        // Without flex the flex directory is there (it stays, empty, for the next file).
        assert_eq!(names_in(&m), [".flex-atomic", "f"]);
    });
    let _ = Command::new("umount").arg(&m).status();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// The mount root of the file system of `p` (the topmost directory with its st_dev).
fn mount_root(p: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(p).unwrap().dev();
    let mut r = p.canonicalize().unwrap();
    while let Some(up) = r.parent() {
        if std::fs::metadata(up).unwrap().dev() != dev {
            break;
        }
        r = up.to_path_buf();
    }
    r
}

/// A data file unlinked while open in atomic mode: its directory can be removed at once
/// (no log beside it), the file stays usable, and its log goes at the last close.
#[test]
fn rmdir_after_unlinking_an_open_atomic_file() {
    let t = run::TestDir::new("atomic-rmdir");
    py_atomic(
        &t.path,
        r#"
sub = os.path.join(d, "sub")
os.mkdir(sub)
p = os.path.join(sub, "f")
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"before")
os.fsync(fd)
d0 = d
d = sub
atomic("f")
lg = log("f")
d = d0
os.unlink(p)
assert os.listdir(sub) == [], os.listdir(sub)
os.rmdir(sub)
assert not os.path.exists(sub)
os.write(fd, b" after")
assert os.pread(fd, 64, 0) == b"before after"
assert os.path.exists(lg), "log gone while the file is open"
os.close(fd)
assert not os.path.exists(lg), "log left after the last close: " + lg
print("ok")
"#,
    );
    assert_eq!(names_in(&t.path), Vec::<String>::new());
}

/// futimens/utimensat after an O_TRUNC atomic open: the times the program set survive
/// the close (the deferred truncation and the logged writes are applied before the times
/// are set); mode and owner stay the kernel's.
#[test]
fn futimens_after_o_trunc_survives_close() {
    let t = run::TestDir::new("atomic-times");
    for n in ["a", "b", "c"] {
        std::fs::write(t.path.join(n), b"old contents, longer than the new").unwrap();
    }
    py_atomic(
        &t.path,
        r#"
def check(name, how):
    p = os.path.join(d, name)
    os.chmod(p, 0o640)
    before = os.stat(p)
    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
    atomic(name)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"new")
    how(fd, p)
    os.close(fd)
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456), (name, st)
    assert st.st_mode == before.st_mode and st.st_uid == before.st_uid and st.st_gid == before.st_gid, (name, st, before)
    assert content(name) == b"new", content(name)
check("a", lambda fd, p: os.utime(fd, ns=(1_000_000_123, 2_000_000_456)))
check("b", lambda fd, p: os.utime(p, ns=(1_000_000_123, 2_000_000_456)))
def both(fd, p):
    os.fsync(fd)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456), follow_symlinks=False)
check("c", both)
print("ok")
"#,
    );
    use std::os::unix::fs::MetadataExt;
    for n in ["a", "b", "c"] {
        let m = std::fs::metadata(t.path.join(n)).unwrap();
        assert_eq!((m.atime(), m.atime_nsec()), (1, 123), "{n}");
        assert_eq!((m.mtime(), m.mtime_nsec()), (2, 456), "{n}");
        assert_eq!(std::fs::read(t.path.join(n)).unwrap(), b"new");
    }
}

/// kill -9 of an atomic writer: its log is at the new location (none beside the data
/// file), and recovery from there gives the last commit (under undo the uncommitted
/// in-place write is rolled back, under redo it was never applied).
#[test]
fn kill_9_then_recovery_from_the_new_location() {
    let t = run::TestDir::new("atomic-kill9");
    let p = t.path.join("f");
    std::fs::write(&p, b"xxxxxxxxxxxxxxxx").unwrap();
    let script = format!(
        r#"{PY}
import signal
p = os.path.join(d, "f")
fd = os.open(p, os.O_RDWR)
atomic("f")
os.pwrite(fd, b"committed", 0)
os.fsync(fd)
os.pwrite(fd, b"UNCOMMITTED-TAIL-BYTES", 0)
os.kill(os.getpid(), signal.SIGKILL)
"#
    );
    run::require("python3", "python3");
    let out = Command::new(run::flexio())
        .args(["run", "--paths"])
        .arg(&t.path)
        .args(["--", "python3", "-c", &script])
        .arg(&t.path)
        .env("FLEX_MODE", "atomic")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal() == Some(libc::SIGKILL)
            || out.status.code() == Some(128 + libc::SIGKILL),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names_in(&t.path), ["f"], "flex left a file beside the data");
    assert!(!legacy_log_of(&p).exists());
    let log = log_of(&p);
    assert!(log.exists(), "no log at {}", log.display());
    let r = flexio::recover_atomic(&p).unwrap();
    assert!(r.is_some(), "recovery found no log");
    assert_eq!(std::fs::read(&p).unwrap(), b"committedxxxxxxx");
    assert!(!log.exists(), "log left after recovery");
    assert_eq!(flexio::recover_atomic(&p).unwrap().map(|r| r.txns), None);
}

/// A log an older version left beside the data file (`.<name>.flexlog`, header naming the
/// data file by inode number) is still recovered, once, by `flexio recover` and by an
/// atomic open, and removed.
#[test]
fn a_log_left_by_an_older_version_is_recovered_once() {
    use flex_engine::atomic::log;
    use std::os::unix::fs::MetadataExt;
    let t = run::TestDir::new("atomic-legacy");
    for (n, by_open) in [("r", false), ("o", true)] {
        let p = t.path.join(n);
        std::fs::write(&p, b"0123456789").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        // Header, WRITE "abc" at 2, COMMIT (size 10): the format older versions wrote.
        let mut img = log::header_bytes(ino, 7).to_vec();
        let mut w = log::rec_header(log::WRITE, 7, 1, 2, 3);
        log::seal(&mut w);
        let mut rec = vec![0u8; log::rec_len(3) as usize];
        rec[..w.len()].copy_from_slice(&w);
        rec[log::PAYLOAD_AT as usize..][..3].copy_from_slice(b"abc");
        img.extend_from_slice(&rec);
        let mut c = log::rec_header(log::COMMIT, 7, 2, 10, 0);
        log::seal(&mut c);
        let mut rec = vec![0u8; log::rec_len(0) as usize];
        rec[..c.len()].copy_from_slice(&c);
        img.extend_from_slice(&rec);
        img.resize(64 << 10, 0);
        std::fs::write(legacy_log_of(&p), &img).unwrap();
        if by_open {
            let f = atomic_rw(&p);
            let mut got = Vec::new();
            (&f).read_to_end(&mut got).unwrap();
            assert_eq!(got, b"01abc56789", "{n}");
            drop(f);
        } else {
            let r = flexio::recover_atomic(&p).unwrap().expect("no log found");
            assert_eq!(r.txns, 1);
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"01abc56789", "{n}");
        assert!(!legacy_log_of(&p).exists(), "{n}: old log left");
        assert!(!log_of(&p).exists(), "{n}: log left");
    }
    assert_eq!(names_in(&t.path), ["o", "r"]);
}

/// A mount root the user cannot write: the log goes to `$HOME/.flex-atomic` when `$HOME`
/// is on the same file system (hidden from the listing of `$HOME` too), else the file is
/// served plainly (stats: `atomic: no place for the log`); never a file in the program's
/// directory. Runs as `nobody` on a fresh root-owned tmpfs (needs root, mount and setpriv;
/// skipped without them).
#[test]
fn log_fallbacks_never_use_the_programs_directory() {
    use std::os::unix::fs::PermissionsExt;
    run::require("python3", "python3");
    let t = run::TestDir::new("atomic-fallback");
    std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = t.path.join("mnt");
    std::fs::create_dir(&m).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0755", "flex-test"])
        .arg(&m)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs mount -t tmpfs and setpriv");
        return;
    }
    let r = std::panic::catch_unwind(|| {
        let (w, home) = (m.join("w"), m.join("home"));
        for d in [&w, &home] {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        let script = r#"
import os, sys
d, name, want = sys.argv[1], sys.argv[2], sys.argv[3]
p = os.path.join(d, name)
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"abc")
home = os.environ["HOME"]
lg = os.path.join(home, ".flex-atomic", "%d.log" % os.fstat(fd).st_ino)
assert os.path.exists(lg) == (want == "home"), (lg, want)
assert name in os.listdir(d) and not [n for n in os.listdir(d) if "flex" in n], os.listdir(d)
if want == "home":
    assert ".flex-atomic" not in os.listdir(home), os.listdir(home)
os.close(fd)
assert open(p, "rb").read() == b"abc"
assert not os.path.exists(lg)
print("ok")
"#;
        let stats = home.join("stats.json");
        for (name, h, want) in [
            ("f", home.to_str().unwrap(), "home"),
            ("g", "/nonexistent", "none"),
        ] {
            let out = Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(run::flexio())
                .args(["run", "--stats-file"])
                .arg(&stats)
                .arg("--paths")
                .arg(&w)
                .args(["--", "python3", "-c", script])
                .arg(&w)
                .args([name, want])
                .env("FLEX_MODE", "atomic")
                .env("HOME", h)
                .current_dir("/")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = std::fs::read_to_string(&stats).unwrap_or_default();
        assert!(s.contains("atomic: no place for the log"), "{s}");
        assert_eq!(names_in(&w), ["f", "g"]);
        assert!(
            !m.join(".flex-atomic").exists(),
            "created in a root-owned mount root"
        );
    });
    let _ = Command::new("umount").arg(&m).status();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// The flex directory at a mount root is shared by every user: a log another user
/// planted there for a file (valid header, a committed write) is never replayed; the
/// file is served plainly instead (stats: `atomic: untrusted log`), its bytes unchanged.
#[test]
fn a_log_planted_by_another_user_is_never_replayed() {
    use flex_engine::atomic::log;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    let t = run::TestDir::new("atomic-planted");
    let p = t.path.join("victim");
    std::fs::write(&p, b"0123456789").unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let ino = f.metadata().unwrap().ino();
    let ident = flex_engine::atomic::site::ident(std::os::fd::AsRawFd::as_raw_fd(&f), ino);
    drop(f);
    let lp = log_of(&p);
    // Where the log would go (the directory exists once any atomic file was open there).
    std::fs::create_dir_all(lp.parent().unwrap()).ok();
    let mut img = log::header_bytes(ident, 7).to_vec();
    let mut w = log::rec_header(log::WRITE, 7, 1, 0, 4);
    log::seal(&mut w);
    let mut rec = vec![0u8; log::rec_len(4) as usize];
    rec[..w.len()].copy_from_slice(&w);
    rec[log::PAYLOAD_AT as usize..][..4].copy_from_slice(b"EVIL");
    img.extend_from_slice(&rec);
    let mut c = log::rec_header(log::COMMIT, 7, 2, 10, 0);
    log::seal(&mut c);
    let mut rec = vec![0u8; log::rec_len(0) as usize];
    rec[..c.len()].copy_from_slice(&c);
    img.extend_from_slice(&rec);
    img.resize(64 << 10, 0);
    std::fs::write(&lp, &img).unwrap();
    std::fs::set_permissions(&lp, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&lp, Some(65534), Some(65534)).unwrap();
    let r = std::panic::catch_unwind(|| {
        py_atomic(
            &t.path,
            r#"
fd = os.open(os.path.join(d, "victim"), os.O_RDWR)
assert os.pread(fd, 16, 0) == b"0123456789", os.pread(fd, 16, 0)
os.pwrite(fd, b"ab", 0)
os.close(fd)
print("ok")
"#,
        );
        assert!(
            flexio::recover_atomic(&p).is_err(),
            "flexio recover trusted it"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"ab23456789");
        assert_eq!(names_in(&t.path), ["victim"]);
    });
    let _ = std::fs::remove_file(&lp);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

/// The names of spare logs of process `pid` in the flex directory of `dir`'s file system.
fn spares_of(dir: &Path, pid: u32) -> Vec<String> {
    let fd = mount_root(dir).join(".flex-atomic");
    let prefix = format!("spare.{pid}.");
    std::fs::read_dir(&fd)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Python: one journal's life as SQLite lives it (create, write, fsync, close, unlink),
/// returning the inode number its log had while it was open.
const JOURNAL: &str = r#"
def journal(tag):
    p = os.path.join(d, "j")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    atomic("j")
    ino = os.stat(log("j")).st_ino
    body = (b"%s-" % tag.encode()) * 500
    assert os.write(fd, body) == len(body)
    os.fsync(fd)
    assert os.pread(fd, len(body) + 1, 0) == body
    os.close(fd)
    os.unlink(p)
    assert not os.path.exists(log("j")), "log of an unlinked journal left"
    return ino
def flex_fds():
    out = {}
    for n in os.listdir("/proc/self/fd"):
        try:
            out[int(n)] = os.readlink("/proc/self/fd/" + n)
        except OSError:
            pass
    return out
"#;

/// A journal's log is kept as a spare and taken over by the next journal (the same log
/// file, no create and remove per transaction), through a `dup2` onto the spare's
/// descriptor and a fork; exit and exec leave no spare behind, and a spare left by a
/// process killed with SIGKILL is removed by the next process that puts a file in atomic
/// mode there. The data written in atomic mode stays exact throughout.
#[test]
fn a_journals_log_is_reused_and_never_left_behind() {
    let t = run::TestDir::new("atomic-spare");
    let body = format!(
        r#"{JOURNAL}
import signal
db = os.open(os.path.join(d, "db"), os.O_RDWR | os.O_CREAT, 0o644)
atomic("db")
first = journal("t0")
for i in range(1, 20):
    assert os.pwrite(db, b"%04d" % i, 4 * i) == 4
    assert journal("t%d" % i) == first, "the journal's log was not reused"
    os.fsync(db)
# The program dup2s onto the spare's descriptor: flex lets it go, nothing is lost.
spare = [n for n, t in flex_fds().items() if "/.flex-atomic/spare." in t]
assert len(spare) == 1, flex_fds()
other = os.open(os.path.join(d, "other"), os.O_RDWR | os.O_CREAT, 0o644)
os.dup2(other, spare[0])
second = journal("after-dup2")
assert os.write(spare[0], b"mine") == 4
assert journal("again") == second
# A forked child makes its own log; the parent's spares stay the parent's (fork hands
# db and other to the kernel: their logs become spares too).
pid = os.fork()
if pid == 0:
    journal("child")
    os._exit(0)
_, st = os.waitpid(pid, 0)
assert st == 0, st
kept = set(os.stat(t).st_ino for t in flex_fds().values() if "/.flex-atomic/spare." in t)
assert second in kept, (second, kept)
assert journal("parent") in kept, "the parent's spares went with the child"
os.close(db)
assert content("other") == b"mine", content("other")
assert content("db") == b"\0" * 4 + b"".join(b"%04d" % i for i in range(1, 20))
print("pid=%d" % os.getpid())
if os.environ.get("SPARE_END") == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if os.environ.get("SPARE_END") == "exec":
    os.execv(sys.executable, [sys.executable, "-c", "pass"])
"#
    );
    let run_it = |end: &str| -> (std::process::Output, u32) {
        let out = Command::new(run::flexio())
            .args(["run", "--paths"])
            .arg(&t.path)
            .args(["--", "python3", "-c", &format!("{PY}{body}")])
            .arg(&t.path)
            .env("FLEX_MODE", "atomic")
            .env("SPARE_END", end)
            .output()
            .expect("spawn flexio run");
        let s = String::from_utf8_lossy(&out.stdout);
        let pid = s
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "script failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let _ = std::fs::remove_file(t.path.join("db"));
        let _ = std::fs::remove_file(t.path.join("other"));
        (out, pid)
    };
    run::require("python3", "python3");
    for end in ["exit", "exec"] {
        let (out, pid) = run_it(end);
        assert!(out.status.success(), "{end}: {}", out.status);
        assert_eq!(spares_of(&t.path, pid), Vec::<String>::new(), "{end}");
    }
    let (out, dead) = run_it("kill");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    assert!(
        !spares_of(&t.path, dead).is_empty(),
        "the killed process left no spare"
    );
    let (_, pid) = run_it("exit");
    assert_eq!(spares_of(&t.path, pid), Vec::<String>::new());
    assert_eq!(
        spares_of(&t.path, dead),
        Vec::<String>::new(),
        "a dead process's spare was not removed"
    );
}

/// exec closes close-on-exec descriptors: a commit point, as a close is. What the program
/// wrote through one before exec is in the file for the program it became (and for
/// everyone after), with or without close-on-exec; the kernel would keep it too.
#[test]
fn exec_commits_what_the_program_wrote() {
    let t = run::TestDir::new("atomic-exec");
    for (name, flags) in [("cloexec", "os.O_CLOEXEC"), ("inherited", "0")] {
        let out = py_atomic(
            &t.path,
            &format!(
                r#"
p = os.path.join(d, "{name}")
fd = os.open(p, os.O_RDWR | os.O_CREAT | {flags}, 0o644)
atomic("{name}")
assert os.write(fd, b"written before exec") == 19
os.execv("/bin/cat", ["cat", p])
"#
            ),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "written before exec",
            "{name}: what cat read"
        );
        assert_eq!(
            std::fs::read(t.path.join(name)).unwrap(),
            b"written before exec",
            "{name}: the file afterwards"
        );
    }
}

/// Six processes open, write, fsync and close one file in atomic mode 200 times each, at
/// once: every open succeeds (the kernel's would) and every one is in atomic mode. Each
/// new opener races the others' logs being created, locked, swept and removed: a fresh
/// sibling log was once swept as dead before its owner locked it (EPERM at open, SQLite's
/// "attempt to write a readonly database"), a lock lost that way gave EBUSY, and a main
/// log removed under a new opener left the file outside atomic mode.
#[test]
fn concurrent_atomic_opens_all_succeed_and_all_are_atomic() {
    run::require("python3", "python3");
    let t = run::TestDir::new("atomic-open-race");
    let stats = t.path.join("stats.json");
    let data = t.sub("data");
    let script = r#"
import os, sys
p = os.path.join(sys.argv[1], "shared")
me = int(sys.argv[2])
for i in range(200):
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    assert os.pwrite(fd, b"%02d" % me, 2 * me) == 2
    os.fsync(fd)
    os.close(fd)
"#;
    let procs: Vec<_> = (0..6)
        .map(|i| {
            Command::new(run::flexio())
                .args(["run", "--paths"])
                .arg(&data)
                .args(["--", "python3", "-c", script])
                .arg(&data)
                .arg(i.to_string())
                .env("FLEX_MODE", "atomic")
                .env("FLEX_STATS", &stats)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn flexio run")
        })
        .collect();
    for (i, c) in procs.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let want: Vec<u8> = (0..6)
        .flat_map(|i| format!("{i:02}").into_bytes())
        .collect();
    assert_eq!(std::fs::read(data.join("shared")).unwrap(), want);
    let s = run::Stats::load(&stats);
    for why in [
        "atomic: no place for the log",
        "atomic: open refused (log error)",
        "atomic: untrusted log (not flex's, or another user's)",
    ] {
        assert_eq!(s.fallbacks(why), 0, "{why}");
    }
    let atomic = s.fallbacks("atomic: shared with another opener (undo, in place)");
    assert!(
        atomic > 1000,
        "only {atomic} of 1200 opens shared in atomic mode"
    );
}
