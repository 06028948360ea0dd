//! The mapping cache lets go: after a process under flex closes its last file on a file
//! system, its background unmapper releases the idle mapping (FLEX_IDLE_UNMAP idle time,
//! FLEX_IDLE_BYTES bound), so `umount` succeeds while the process lives on and
//! /proc/PID/maps no longer shows the file. A reopen racing with the release reads
//! correct data.
//!
//! Programs: python3 under `flexio run`. The tests mount a small tmpfs (root). Build the
//! workspace first (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A tmpfs mounted for one test; unmounted (lazily, if still mounted) on drop.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(dir: PathBuf) -> Mounted {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (these tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted { dir }
    }

    /// Try `umount` until it succeeds or `deadline` passes; the last error otherwise.
    fn umount_within(&self, deadline: Duration) -> Result<(), String> {
        let until = Instant::now() + deadline;
        loop {
            let out = Command::new("umount")
                .arg(&self.dir)
                .output()
                .expect("run umount");
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// Writes and reads the file argv[1] (256 KiB) so that flex maps it, checks the mapping is in
/// /proc/self/maps while open, closes it (a forked child too with "fork"), prints
/// "closed PID..." and waits for stdin to close.
const PY_HOLD: &str = r#"
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
data = bytes(range(256)) * 1024
assert os.pwrite(fd, data, 0) == len(data)
for _ in range(4):
    assert os.pread(fd, len(data), 0) == data
mapped = path in open("/proc/self/maps").read()
os.close(fd)
pids = [os.getpid()]
if "fork" in sys.argv[2:]:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    pids.append(child)
print("mapped", mapped, flush=True)
print("closed", *pids, flush=True)
sys.stdin.read()
if "fork" in sys.argv[2:]:
    os.close(w)
    os.waitpid(child, 0)
"#;

struct Held {
    child: Child,
    out: BufReader<ChildStdout>,
    stats: PathBuf,
}

fn stats_path(t: &TestDir) -> PathBuf {
    // Outside the mounted file system: the statistics are written at exit.
    t.join("stats.json")
}

/// Start python3 under flex on `fs` with `env`; returns once it closed the file.
fn hold(t: &TestDir, fs: &Path, args: &[&str], env: &[(&str, &str)]) -> (Held, Vec<u32>) {
    require("python3", "python3");
    let stats = stats_path(t);
    let mut c = Command::new(flexio());
    c.arg("run")
        .arg("--paths")
        .arg(fs)
        .arg("--stats-file")
        .arg(&stats)
        .arg("--")
        .args(["python3", "-c", PY_HOLD])
        .arg(fs.join("f"))
        .args(args)
        // Not in the mounted file system: a current directory there keeps it busy.
        .current_dir(&t.path)
        .env("FLEX_ADOPT_AFTER", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("run flexio run python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout pipe"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read from python");
    assert_eq!(
        line.trim(),
        "mapped True",
        "flex did not map the file while it was open"
    );
    line.clear();
    out.read_line(&mut line).expect("read from python");
    let pids: Vec<u32> = line
        .strip_prefix("closed ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    (Held { child, out, stats }, pids)
}

impl Held {
    /// Let the program exit; its statistics (every process's line).
    fn finish(mut self) -> Stats {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        let st = self.child.wait().expect("wait for python");
        assert!(st.success(), "python under flex failed: {st:?} {rest}");
        Stats::load(&self.stats)
    }
}

fn stat_sum(s: &Stats, key: &str) -> u64 {
    s.procs.iter().map(|p| p[key].as_u64().unwrap_or(0)).sum()
}

fn maps_show(pid: u32, file: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.contains(file.to_str().unwrap()))
        .unwrap_or(false)
}

/// Idle time: a couple of seconds after the last close the file system unmounts, while
/// the process lives; its maps no longer show the file; FLEX_STATS counts the unmap.
#[test]
fn umount_succeeds_after_last_close() {
    let t = TestDir::new("idle-umount");
    let fs = Mounted::new(t.sub("mnt"));
    let (held, pids) = hold(&t, &fs.dir, &[], &[("FLEX_IDLE_UNMAP", "0.5")]);
    let file = fs.dir.join("f");
    let r = fs.umount_within(Duration::from_secs(5));
    for &p in &pids {
        assert!(!maps_show(p, &file), "process {p} still maps {file:?}");
    }
    let stats = held.finish();
    if let Err(e) = r {
        panic!("umount still fails 5 s after the last close: {e}");
    }
    assert!(stat_sum(&stats, "maps") >= 1, "{}", stats.dump());
    assert!(
        stat_sum(&stats, "unmaps") >= 1,
        "the idle release is not counted: {}",
        stats.dump()
    );
}

/// A forked child inherits the idle mapping: its own unmapper releases it too.
#[test]
fn umount_succeeds_with_a_forked_child_alive() {
    let t = TestDir::new("idle-fork");
    let fs = Mounted::new(t.sub("mnt"));
    let (held, pids) = hold(&t, &fs.dir, &["fork"], &[("FLEX_IDLE_UNMAP", "0.5")]);
    assert_eq!(pids.len(), 2);
    let r = fs.umount_within(Duration::from_secs(5));
    let stats = held.finish();
    if let Err(e) = r {
        panic!("umount still fails 5 s after the last close (parent and child alive): {e}");
    }
    assert!(stat_sum(&stats, "unmaps") >= 2, "{}", stats.dump());
}

/// The bytes bound releases at once, whatever the idle time (here 1000 s).
#[test]
fn idle_bytes_bound_releases_at_once() {
    let t = TestDir::new("idle-bytes");
    let fs = Mounted::new(t.sub("mnt"));
    let (held, _) = hold(
        &t,
        &fs.dir,
        &[],
        &[("FLEX_IDLE_UNMAP", "1000"), ("FLEX_IDLE_BYTES", "0")],
    );
    let r = fs.umount_within(Duration::from_secs(5));
    let stats = held.finish();
    if let Err(e) = r {
        panic!("umount fails though idle mapped bytes exceed FLEX_IDLE_BYTES: {e}");
    }
    assert!(stat_sum(&stats, "unmaps") >= 1, "{}", stats.dump());
}

/// Within the idle time and the bound the cache keeps the mapping: a reopen reuses it.
#[test]
fn cache_keeps_recent_mappings() {
    require("python3", "python3");
    let t = TestDir::new("idle-keep");
    let script = r#"
import os
data = b"k" * 200000
for i in range(20):
    fd = os.open("f", os.O_RDWR | os.O_CREAT, 0o644)
    if i == 0:
        os.pwrite(fd, data, 0)
    assert os.pread(fd, len(data), 0) == data
    os.close(fd)
"#;
    let r = flex(
        &Spec::new("python3", &["-c", script], &t.path)
            .env("FLEX_ADOPT_AFTER", "0")
            .env("FLEX_IDLE_UNMAP", "1000"),
        &[&t.path],
    );
    r.assert_ok("reopen loop");
    assert_eq!(stat_sum(&r.stats, "maps"), 1, "{}", r.stats.dump());
    assert_eq!(stat_sum(&r.stats, "unmaps"), 0, "{}", r.stats.dump());
}

/// Opens, reads, writes and closes in a loop (two threads, two files) while the idle
/// time is 0 (each close wakes the unmapper): reopens race with the release, and every read sees the bytes last
/// written.
#[test]
fn reopen_during_release_reads_correct_data() {
    require("python3", "python3");
    let t = TestDir::new("idle-race");
    let script = r#"
import os, threading, struct
N = 64 * 1024
errors = []
def run(name, rounds):
    ref = bytearray(os.urandom(N))
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, ref)
    os.close(fd)
    for i in range(rounds):
        fd = os.open(name, os.O_RDWR)
        got = os.pread(fd, N, 0)
        if got != ref:
            errors.append((name, i))
            os.close(fd)
            return
        at = (i * 4093) % (N - 8)
        v = struct.pack("<Q", i * 2654435761 & (2**64 - 1))
        os.pwrite(fd, v, at)
        ref[at:at + 8] = v
        os.close(fd)
ts = [threading.Thread(target=run, args=(n, 1500)) for n in ("a", "b")]
for x in ts: x.start()
for x in ts: x.join()
assert not errors, errors
print("ok")
"#;
    let r = flex(
        &Spec::new("python3", &["-c", script], &t.path)
            .env("FLEX_ADOPT_AFTER", "0")
            .env("FLEX_IDLE_UNMAP", "0"),
        &[&t.path],
    );
    r.assert_ok("reopen loop with no idle time");
    assert_eq!(r.stdout(), b"ok\n");
    let (maps, unmaps) = (stat_sum(&r.stats, "maps"), stat_sum(&r.stats, "unmaps"));
    assert!(
        unmaps > 10 && maps > 10,
        "the loop did not race with releases (maps {maps}, unmaps {unmaps}): {}",
        r.stats.dump()
    );
    let _ = std::io::stdout().flush();
}

/// Unlinking a closed file drops its idle mapping at once (the file's space is freed, not
/// held until the idle time passes), whether or not other files are open or idle; unlinks
/// of files flex holds nothing of (a journal the kernel serves) cost no lookup.
#[test]
fn unlink_of_a_closed_file_drops_its_mapping_at_once() {
    require("python3", "python3");
    let t = TestDir::new("unlink-forget");
    let script = r#"
import os, sys
d = sys.argv[1]
def mapped(p):
    with open("/proc/self/maps") as m:
        return any(p in l for l in m)
keep = os.open(os.path.join(d, "db"), os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(keep, b"d" * 65536, 0)
for _ in range(8):
    assert os.pread(keep, 4096, 0) == b"d" * 4096
for i in range(3):
    p = os.path.join(d, "f%d" % i)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"x" * 65536, 0)
    for _ in range(8):
        assert os.pread(fd, 4096, 4096) == b"x" * 4096
    assert mapped(p), "flex did not map " + p
    os.close(fd)
    assert mapped(p), "idle mapping released before its time"
    os.unlink(p)
    assert not mapped(p), "the mapping of an unlinked file outlived it: " + p
assert mapped(os.path.join(d, "db"))
os.close(keep)
"#;
    let out = Command::new(flexio())
        .args(["run", "--paths"])
        .arg(&t.path)
        .args(["--", "python3", "-c", script])
        .arg(&t.path)
        .env("FLEX_IDLE_UNMAP", "600")
        .output()
        .expect("spawn flexio run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
