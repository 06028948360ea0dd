//! Process semantics under `flexio run`: offsets shared through dup, fork and execve;
//! O_APPEND from several threads; kill -9 of an appending writer and recovery; ENOSPC on
//! a full tmpfs; a file truncated by another process while flex reads it.
//!
//! Programs: python3 scripts and a C helper (tests/common/helper.c) compiled with `cc`.
//! Needs the Debian packages python3, gcc, coreutils, strace. The ENOSPC test mounts a tmpfs
//! (root). Build the workspace first (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Run a python script in `plain/` and under flex in `flex/`; same output; returns the
/// flex run. The script asserts its own expectations too.
fn py_both(t: &TestDir, what: &str, script: &str) -> (Ran, Ran, PathBuf, PathBuf) {
    py_both_env(t, what, script, &[])
}

/// [`py_both`] with extra environment for the run under flex.
fn py_both_env(
    t: &TestDir,
    what: &str,
    script: &str,
    env: &[(&str, &str)],
) -> (Ran, Ran, PathBuf, PathBuf) {
    require("python3", "python3");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let a = plain(&Spec::new("python3", &["-c", script], &p));
    a.assert_ok(&format!("{what} (without flex)"));
    let spec = env
        .iter()
        .fold(Spec::new("python3", &["-c", script], &f), |s, (k, v)| {
            s.env(k, v)
        });
    let b = flex(&spec, &[&f]);
    b.assert_ok(&format!("{what} (under flex)"));
    assert_same_output(what, &a, &b);
    (a, b, p, f)
}

const PY_DUP: &str = r#"
import os, fcntl
out = os.dup(1)
def tr(*a):
    os.write(out, (" ".join(str(x) for x in a) + "\n").encode())
fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(64):
    os.write(fd, b"%04d" % i * 256)          # 64 KiB, many writes: flex adopts the file
d1 = os.dup(fd)
d2 = os.dup2(fd, 50)
d3 = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
d4 = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 200)
ds = [fd, d1, d2, d3, d4]
pos = os.lseek(fd, 0, os.SEEK_CUR)
assert pos == 65536, pos
for d in ds:
    assert os.lseek(d, 0, os.SEEK_CUR) == pos
os.lseek(d1, 100, os.SEEK_SET)
for i in range(200):
    d = ds[i % len(ds)]
    p0 = os.lseek(ds[(i + 1) % len(ds)], 0, os.SEEK_CUR)
    if i % 3 == 0:
        b = os.read(d, 37)
        tr("read", i, p0, b[:8])
    elif i % 3 == 1:
        n = os.write(d, b"<%d>" % i)
        tr("write", i, p0, n)
    else:
        tr("seek", i, os.lseek(d, -11, os.SEEK_CUR))
    p1 = os.lseek(ds[(i + 2) % len(ds)], 0, os.SEEK_CUR)
    tr("pos", p1)
# Close the original: the duplicates keep the description and its offset.
os.close(fd)
tr("after close", os.lseek(d1, 0, os.SEEK_CUR), os.read(d2, 10))
os.lseek(d3, 0, os.SEEK_END)
os.write(d4, b"END")
tr("size", os.fstat(d1).st_size, os.lseek(d2, 0, os.SEEK_CUR))
# dup2 onto stdout: writes through fd 1 land at the shared offset.
os.dup2(d1, 1)
os.write(1, b"via-stdout\n")
print("via-print", flush=True)
tr("after stdout", os.lseek(d2, 0, os.SEEK_CUR), os.fstat(1).st_size)
os.write(d3, b"after\n")
os.lseek(d2, 0, os.SEEK_SET)
tr("read back", len(os.read(d2, 1 << 20)))
for d in (d1, d2, d3, d4):
    os.close(d)
os.close(1)
tr("stat", os.stat("f").st_size)
"#;

#[test]
fn offsets_shared_across_dup() {
    let t = TestDir::new("dup");
    let (_, r, p, f) = py_both(&t, "dup", PY_DUP);
    assert_same_file(&p.join("f"), &f.join("f"));
    r.stats.assert_served(&["write", "read"], "f");
    assert!(r.stats.served("lseek") > 0 && r.stats.served("dup") > 0);
}

const PY_FORK: &str = r#"
import os
def tr(*a):
    print(" ".join(str(x) for x in a), flush=True)
fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(40):
    os.write(fd, bytes([65 + i % 26]) * 1000)
for i in range(20):
    assert os.pread(fd, 10, i * 1000) == bytes([65 + i % 26]) * 10
    os.pwrite(fd, b"%02d" % i, 30000 + i * 10)
ap = os.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
for i in range(20):
    os.write(ap, b"parent before fork %d\n" % i)
os.lseek(fd, 5000, os.SEEK_SET)
to_child_r, to_child_w = os.pipe()
to_parent_r, to_parent_w = os.pipe()
pid = os.fork()
if pid == 0:
    for i in range(30):
        os.read(to_child_r, 1)
        p = os.lseek(fd, 0, os.SEEK_CUR)
        b = os.read(fd, 7)
        os.write(fd, b"[c%02d]" % i)
        os.write(ap, b"child %d\n" % i)
        os.write(to_parent_w, b"%d %d %s\n" % (p, os.lseek(fd, 0, os.SEEK_CUR), b))
    os._exit(0)
rd = os.fdopen(to_parent_r)
for i in range(30):
    p = os.lseek(fd, 0, os.SEEK_CUR)
    b = os.read(fd, 5)
    os.write(fd, b"{p%02d}" % i)
    os.write(ap, b"parent %d\n" % i)
    mine = os.lseek(fd, 0, os.SEEK_CUR)
    os.write(to_child_w, b"x")
    cp, cend, cb = rd.readline().split()
    # The child continued exactly where the parent stopped, and back.
    assert int(cp) == mine, (cp, mine)
    assert os.lseek(fd, 0, os.SEEK_CUR) == int(cend)
    tr(i, p, b, cp, cend, cb)
_, st = os.waitpid(pid, 0)
assert st == 0
tr("size", os.fstat(fd).st_size, os.stat("f").st_size, os.fstat(ap).st_size)
os.lseek(fd, 0, os.SEEK_END)
os.write(fd, b"tail")
os.close(fd)
os.close(ap)
tr("final", os.stat("f").st_size, os.stat("log").st_size)
"#;

#[test]
fn offsets_shared_across_fork() {
    let t = TestDir::new("fork");
    let (_, r, p, f) = py_both(&t, "fork", PY_FORK);
    assert_same_file(&p.join("f"), &f.join("f"));
    assert_same_file(&p.join("log"), &f.join("log"));
    r.stats.assert_served(&["pwrite", "pread"], "f");
    assert!(
        r.stats.served("fork") > 0,
        "fork not seen: {}",
        r.stats.dump()
    );
}

const PY_EXEC: &str = r#"
import os, sys
if len(sys.argv) > 1:
    # The new image: continue on the inherited descriptors.
    fd, ap, want = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    st = os.fstat(fd).st_size
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    rest = os.read(fd, 1 << 20)
    print("child", st, pos, len(rest), rest[-6:], flush=True)
    assert pos == want, (pos, want)
    assert st == 100000, st
    assert rest == bytes((i * 7) % 256 for i in range(pos, st))
    os.write(fd, b"child-end")
    os.write(ap, b"child line\n")
    print("child apsize", os.fstat(ap).st_size, flush=True)
    # And once more into a program that is not python: cat continues from our offset.
    os.lseek(fd, 50000, os.SEEK_SET)
    os.dup2(fd, 0)
    os.execv("/bin/cat", ["cat"])
fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
data = bytes((i * 7) % 256 for i in range(100000))
for i in range(0, len(data), 1000):
    os.write(fd, data[i:i + 1000])
ap = os.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
for i in range(50):
    os.write(ap, b"parent line %d\n" % i)
os.lseek(fd, 12345, os.SEEK_SET)
os.read(fd, 100)
os.set_inheritable(fd, True)
os.set_inheritable(ap, True)
print("parent", os.fstat(fd).st_size, os.fstat(ap).st_size, flush=True)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[0] if sys.argv[0] != "-c" else SCRIPT,
         str(fd), str(ap), "12445"])
"#;

#[test]
fn offsets_and_sizes_survive_execve() {
    // The script re-executes itself: pass its text through an environment-free trick.
    let script = format!("SCRIPT = {PY_EXEC:?}\n{PY_EXEC}");
    let t = TestDir::new("exec");
    // Adopt at the first servable call (the read after the extending writes), so the exec
    // hands over a mapped file's offset and size.
    let (a, r, p, f) = py_both_env(&t, "exec", &script, &[("FLEX_ADOPT_AFTER", "0")]);
    let out = String::from_utf8_lossy(a.stdout()).to_string();
    assert!(out.contains("child 100000 12445"), "{out}");
    assert_same_file(&p.join("f"), &f.join("f"));
    assert_same_file(&p.join("log"), &f.join("log"));
    let log = std::fs::read_to_string(f.join("log")).unwrap();
    assert!(log.ends_with("parent line 49\nchild line\n"), "{log}");
    assert_eq!(ksize(&f.join("f")), 100000 + 9);
    r.stats.assert_served(&["write", "read"], "f");
    assert!(r.stats.served("exec") > 0);
}

/// Writes 64 lines through one descriptor, overwrites the first word, seeks to 100 and execs
/// a shell (with `execl`, `execlp` or `execle`, the variadic exec calls) that writes "x" to
/// the inherited descriptor: the kernel's offset must be 100 then, and the file's size exact.
const C_EXECL: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 1; }
    char line[32];
    for (int i = 0; i < 64; i++) {
        int n = snprintf(line, sizeof line, "line %02d ........\n", i);
        if (write(fd, line, n) != n) { perror("write"); return 1; }
    }
    /* An overwrite inside the file: served from the mapping. */
    if (lseek(fd, 0, SEEK_SET) != 0 || write(fd, "LINE", 4) != 4) { perror("LINE"); return 1; }
    if (lseek(fd, 100, SEEK_SET) != 100) { perror("lseek"); return 1; }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "echo x >&%d", fd);
    char *env[] = { "PATH=/usr/bin:/bin", NULL };
    if (!strcmp(argv[1], "execl")) execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    else if (!strcmp(argv[1], "execlp")) execlp("sh", "sh", "-c", cmd, (char *)NULL);
    else if (!strcmp(argv[1], "execle")) execle("/bin/sh", "sh", "-c", cmd, (char *)NULL, env);
    perror(argv[1]);
    return 1;
}
"#;

/// Compile a C program for this test binary (reused while its source is unchanged).
fn compile_c(name: &str, src: &str) -> PathBuf {
    require("cc", "gcc");
    let hash = src.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join(format!("{name}-{hash:016x}"));
    if !out.exists() {
        let c = dir.join(format!("{name}-{hash:016x}.{}.c", std::process::id()));
        std::fs::write(&c, src).expect("write C source");
        let tmp = c.with_extension("tmp");
        let o = Command::new("cc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&c)
            .output()
            .expect("run cc");
        assert!(
            o.status.success(),
            "cc {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::rename(&tmp, &out).expect("rename program");
        let _ = std::fs::remove_file(&c);
    }
    out
}

#[test]
fn variadic_exec_hands_the_offset_to_the_kernel() {
    let prog = compile_c("flex-execl", C_EXECL);
    let prog = prog.to_str().expect("UTF-8 path");
    let t = TestDir::new("execl");
    for call in ["execl", "execlp", "execle"] {
        let (p, f) = (
            t.sub(&format!("plain-{call}")),
            t.sub(&format!("flex-{call}")),
        );
        plain(&Spec::new(prog, &[call, "f"], &p)).assert_ok(&format!("{call} (without flex)"));
        // Adopt at the first servable call: the overwrite, after 64 extending writes.
        let spec = Spec::new(prog, &[call, "f"], &f).env("FLEX_ADOPT_AFTER", "0");
        let r = flex(&spec, &[&f]);
        r.assert_ok(&format!("{call} (under flex)"));
        let data = std::fs::read(p.join("f")).expect("read plain file");
        assert_eq!((&data[..6], &data[100..102]), (&b"LINE 0"[..], &b"x\n"[..]));
        assert_eq!(data.len(), 64 * 17);
        assert_same_file(&p.join("f"), &f.join("f"));
        r.stats.assert_served(&["write"], "f");
        assert!(r.stats.served("exec") > 0, "{call}: {}", r.stats.dump());
    }
}

#[test]
fn o_append_from_several_threads() {
    let h = helper();
    let t = TestDir::new("append");
    let f = t.sub("flex");
    let (threads, records) = (4usize, 3000usize);
    let r = flex(
        &Spec::new(
            h.to_str().unwrap(),
            &["append", "log", &threads.to_string(), &records.to_string()],
            &f,
        ),
        &[&f],
    );
    r.assert_ok("append helper");
    let data = std::fs::read(f.join("log")).unwrap();
    let mut seen = vec![vec![false; records]; threads];
    let mut total = 0usize;
    for line in data.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(line).expect("record is text");
        let (t, rr): (usize, usize) = (s[2..4].parse().unwrap(), s[7..13].parse().unwrap());
        let len = 24 + (rr * 7 + t * 13) % 200;
        assert_eq!(
            line.len() + 1,
            len,
            "record {s} has the wrong length (interleaved?)"
        );
        let pad = (b'a' + t as u8) as char;
        assert!(
            s[14..].chars().all(|c| c == pad),
            "record {s} is interleaved with another"
        );
        assert!(!seen[t][rr], "record t={t} r={rr} appears twice");
        seen[t][rr] = true;
        total += len;
    }
    for (t, v) in seen.iter().enumerate() {
        if let Some(r) = v.iter().position(|x| !x) {
            panic!("record t={t} r={r} is missing");
        }
    }
    assert_eq!(data.len(), total, "bytes outside records");
    let out = String::from_utf8_lossy(r.stdout()).to_string();
    assert_eq!(out, format!("size {total} pos {total}\nreadback {total}\n"));
    r.stats.assert_served(&["write", "pread"], "log");
}

/// Byte `o` of every file the helper writes (the C `pat`).
fn pat(o: u64) -> u8 {
    ((o ^ (o >> 8) ^ (o >> 16))
        .wrapping_mul(0x9d)
        .wrapping_add(7)
        & 0xff) as u8
}

/// Record ends of the helper's `writer` mode.
fn record_ends(upto: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut end = 0u64;
    let mut i = 0u64;
    while end <= upto {
        end += 1 + (i * 7919) % 5000;
        v.push(end);
        i += 1;
    }
    v
}

/// Start the writer under flex, read its reports, kill -9 after `after` reports.
/// Returns the last reported end.
fn kill_writer(dir: &Path, after: usize) -> u64 {
    let h = helper();
    let mut child = Command::new(flexio())
        .args(["run", "--paths"])
        .arg(dir)
        .arg("--")
        .arg(&h)
        .args(["writer", "log"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let mut rd = BufReader::new(child.stdout.take().unwrap());
    let mut last = 0u64;
    let mut line = String::new();
    for _ in 0..after {
        line.clear();
        if rd.read_line(&mut line).expect("read report") == 0 {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "writer stopped early: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        last = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    // `flexio run` became the writer (it execs the program): kill the child itself.
    // SAFETY: kill(2) on our own child, not yet reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill writer");
    let st = child.wait().expect("wait writer");
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the writer died of SIGKILL"
    );
    last
}

fn check_recovered(file: &Path, last: u64, kernel_before: u64) {
    let data = std::fs::read(file).unwrap();
    let s = data.len() as u64;
    let ends = record_ends(s + 10_000);
    assert!(
        s >= last,
        "recovered size {s} is below the last reported end {last}"
    );
    // The end of a completed write, or a page boundary inside the write in flight: the
    // kernel's write stops between pages when a fatal signal is pending (SIGKILL cuts it
    // short exactly as without flex, which hands extending writes to the kernel).
    // (A trimmed file's size is the trailer's logical size: always a record end.)
    assert!(
        ends.contains(&s) || (s.is_multiple_of(4096) && kernel_before == s),
        "recovered size {s} is neither the end of a completed write nor a page boundary \
         of a write the kernel cut (kernel size after the kill: {kernel_before})"
    );
    assert!(
        kernel_before == s || (kernel_before > s && kernel_before.is_multiple_of(4096)),
        "kernel size after the kill ({kernel_before}) is neither exact ({s}) nor over-allocated"
    );
    if let Some(o) = data
        .iter()
        .enumerate()
        .position(|(o, &b)| b != pat(o as u64))
    {
        panic!("data differs at offset {o} of {s}");
    }
}

#[test]
fn kill_9_while_appending_then_recover() {
    let t = TestDir::new("kill");
    // 1: `flexio recover PATH`.
    let a = t.sub("a");
    let last = kill_writer(&a, 3000);
    let before = ksize(&a.join("log"));
    let out = Command::new(flexio())
        .arg("recover")
        .arg(a.join("log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flexio recover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    check_recovered(&a.join("log"), last, before);
    // Trimmed if it was over-allocated, else clean.
    let after = ksize(&a.join("log"));
    assert!(
        (before > after && said.contains(&format!("trimmed {before} -> {after}")))
            || (before == after && said.contains("clean")),
        "recover said {said}"
    );
    // 2: the next open through flex (a reader) trims it, and reads exactly the data.
    let b = t.sub("b");
    let last = kill_writer(&b, 2000);
    let before = ksize(&b.join("log"));
    let r = flex(&Spec::new("cat", &["log"], &b), &[&b]);
    r.assert_ok("cat after kill");
    let after = ksize(&b.join("log"));
    assert_eq!(
        r.stdout().len() as u64,
        after,
        "cat read past the logical size"
    );
    assert_eq!(r.stdout(), &std::fs::read(b.join("log")).unwrap()[..]);
    check_recovered(&b.join("log"), last, before);
    // 3: a writer killed, then appended to again under flex: the file continues exactly.
    let c = t.sub("c");
    let last = kill_writer(&c, 2500);
    let before = ksize(&c.join("log"));
    let r = flex(
        &Spec::new(
            "bash",
            &[
                "-c",
                "for i in 1 2 3; do printf 'more\\n' >> log; done; wc -c < log",
            ],
            &c,
        ),
        &[&c],
    );
    r.assert_ok("append after kill");
    let data = std::fs::read(c.join("log")).unwrap();
    assert!(data.ends_with(b"more\nmore\nmore\n"));
    let s = data.len() as u64 - 15;
    assert_eq!(
        String::from_utf8_lossy(r.stdout()).trim(),
        (s + 15).to_string()
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(c.join("log"))
        .unwrap()
        .set_len(s)
        .unwrap();
    check_recovered(&c.join("log"), last, before);
}

/// A 1 MiB tmpfs mounted for one test, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn new(dir: PathBuf) -> SmallFs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a small tmpfs on {} (the ENOSPC tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn enospc_run(fs: &Path, env: &[(&str, &str)]) {
    let h = helper();
    let mut spec = Spec::new(h.to_str().unwrap(), &["enospc", "f"], fs);
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    let r = flex(&spec, &[fs]);
    assert_eq!(
        r.out.status.signal(),
        None,
        "the writer died of a signal (SIGBUS?) on a full file system"
    );
    r.assert_ok("enospc helper");
    let out = String::from_utf8_lossy(r.stdout()).to_string();
    let lines: Vec<&str> = out.lines().collect();
    let wrote: u64 = lines[0]
        .strip_prefix("wrote ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad output {out}"));
    assert!(lines[0].ends_with("errno ENOSPC"), "{out}");
    assert!(
        wrote >= 512 << 10,
        "only {wrote} bytes fit in a 1 MiB tmpfs: {out}"
    );
    assert_eq!(lines[1], format!("pos {wrote} size {wrote}"), "{out}");
    assert_eq!(lines[2], format!("verified {wrote} bad 0"), "{out}");
    assert_eq!(lines[3], "again ENOSPC", "{out}");
    assert_eq!(lines[4], "after-truncate 4096", "{out}");
    // What the kernel holds: the first half, then one block.
    let data = std::fs::read(fs.join("f")).unwrap();
    assert_eq!(data.len() as u64, wrote / 2 + 4096);
    if let Some(o) = data
        .iter()
        .enumerate()
        .position(|(o, &b)| b != pat(o as u64))
    {
        panic!("data differs at offset {o}");
    }
    r.stats.assert_served(&["write", "pread"], "f");
    std::fs::remove_file(fs.join("f")).unwrap();
}

#[test]
fn enospc_on_a_full_tmpfs() {
    let t = TestDir::new("enospc");
    let fs = SmallFs::new(t.sub("small"));
    // Default growth steps (1 MiB: the reservation itself fails), then small steps (flex
    // serves writes from its reservation until the file system runs out).
    enospc_run(&fs.dir, &[]);
    enospc_run(&fs.dir, &[("FLEX_GROW_MIN", "64k")]);
    // A hole inside the file's size that the file system can no longer fill.
    let h = helper();
    let r = flex(
        &Spec::new(h.to_str().unwrap(), &["hole", "f", "filler"], &fs.dir),
        &[&fs.dir],
    );
    assert_eq!(r.out.status.signal(), None, "SIGBUS writing into a hole");
    r.assert_ok("hole helper");
    let out = String::from_utf8_lossy(r.stdout()).to_string();
    assert!(out.contains("hole-writes enospc 16 ok 0 other 0"), "{out}");
    assert!(out.contains("data-bad 0 size 327680"), "{out}");
    r.stats.assert_served(&["pread"], "f");
}

/// Send one command to the reader and read its answer.
fn ask(w: &mut impl Write, r: &mut impl BufRead, cmd: &str) -> String {
    writeln!(w, "{cmd}").unwrap();
    w.flush().unwrap();
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim().to_string()
}

#[test]
fn truncated_by_another_process_while_reading() {
    let h = helper();
    let t = TestDir::new("trunc");
    let f = t.sub("flex");
    let file = f.join("data");
    let content: Vec<u8> = (0..(4u64 << 20)).map(pat).collect();
    std::fs::write(&file, &content).unwrap();
    // Synchronised: the reader (under flex) answers preads; this process truncates.
    let mut child = Command::new(flexio())
        .args(["run", "--paths"])
        .arg(&f)
        .arg("--")
        .arg(&h)
        .args(["reader", "data"])
        .current_dir(&f)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..4 {
        assert_eq!(ask(&mut w, &mut r, "read 0"), "total 4194304 bad 0");
    }
    let set = |len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    // Shrink to a size inside a page.
    set(1_000_003);
    assert_eq!(ask(&mut w, &mut r, "pread 999990 100"), "n 13 bad 0");
    assert_eq!(ask(&mut w, &mut r, "pread 1000003 100"), "n 0 bad 0");
    assert_eq!(ask(&mut w, &mut r, "pread 3000000 4096"), "n 0 bad 0");
    assert_eq!(ask(&mut w, &mut r, "pread 4190000 4096"), "n 0 bad 0");
    assert_eq!(ask(&mut w, &mut r, "read 0"), "total 1000003 bad 0");
    assert_eq!(ask(&mut w, &mut r, "fstat"), "size 1000003");
    // Shrink again without the reader looking first: reads past the new end.
    set(65_536 + 10);
    assert_eq!(ask(&mut w, &mut r, "pread 65000 4096"), "n 546 bad 0");
    assert_eq!(ask(&mut w, &mut r, "pread 500000 10"), "n 0 bad 0");
    set(5);
    assert_eq!(ask(&mut w, &mut r, "read 0"), "total 5 bad 0");
    assert_eq!(ask(&mut w, &mut r, "end"), "end 5");
    // Empty, then extended again by the other process (zeros, not the old bytes).
    set(0);
    assert_eq!(ask(&mut w, &mut r, "pread 0 100"), "n 0 bad 0");
    set(8192);
    let nonzero = (0..100).filter(|&o| pat(o) != 0).count();
    assert_eq!(
        ask(&mut w, &mut r, "pread 0 100"),
        format!("n 100 bad {nonzero}"),
        "the re-extended file reads as zeros"
    );
    drop(w);
    let st = child.wait().unwrap();
    assert!(st.success(), "reader: {st:?}");

    // Racing: the reader loops while a plain process shrinks and re-extends the file.
    std::fs::write(&file, &content).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let truncator = {
        let stop = stop.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            let fh = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let len = (i * 1_234_567) % (4 << 20);
                fh.set_len(len).unwrap();
                std::thread::yield_now();
                fh.set_len(4 << 20).unwrap();
                i += 1;
            }
            i
        })
    };
    let r = flex(
        &Spec::new(h.to_str().unwrap(), &["race", "data", "20000"], &f),
        &[&f],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = truncator.join().unwrap();
    assert_eq!(r.out.status.signal(), None, "the reader died of a signal");
    r.assert_ok("racing reader");
    assert!(rounds > 0);
    r.stats.assert_served(&["pread"], "data");
}

/// Leave `path` as a crashed over-allocating writer would: `data`, zeros up to a page
/// multiple, and a valid trailer that records `data.len()` as the logical size.
fn crashed_file(path: &Path, data: &[u8], ksize: u64) {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let f = std::fs::File::create(path).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.set_len(ksize).unwrap();
    let t = flexio::flex_engine::trailer::Trailer {
        lsize: data.len() as u64,
        ksize,
        ino: f.metadata().unwrap().ino(),
    };
    f.write_all_at(&t.encode(), ksize - 64).unwrap();
}

/// Files are left over-allocated only where flex over-allocates: on DAX, or under this
/// test knob; there (and only there) every open looks for a crash-left trailer. Elsewhere
/// opens are lazy and the kernel serves a file as it is.
const OVERALLOCATING: (&str, &str) = ("FLEX_TEST_OVERALLOCATE", "1");

#[test]
fn crashed_file_is_trimmed_by_the_next_open() {
    let t = TestDir::new("crashed");
    let f = t.sub("flex");
    let data = noise(300_001, 77);
    // A reader (read-only descriptor) recovers it and reads exactly the data.
    crashed_file(&f.join("a"), &data, 1 << 20);
    let r = flex(
        &Spec::new("cat", &["a"], &f).env(OVERALLOCATING.0, OVERALLOCATING.1),
        &[&f],
    );
    r.assert_ok("cat");
    assert_eq!(
        r.stdout().len(),
        data.len(),
        "cat read past the logical size"
    );
    assert!(r.stdout() == &data[..]);
    assert_eq!(
        ksize(&f.join("a")),
        data.len() as u64,
        "not trimmed by the reader"
    );
    assert!(
        r.stats
            .procs
            .iter()
            .any(|p| p["recoveries"].as_u64() == Some(1)),
        "no recovery counted: {}",
        r.stats.dump()
    );
    // A writer appending to it continues at the logical end.
    crashed_file(&f.join("b"), &data, 2 << 20);
    let r = flex(
        &Spec::new("bash", &["-c", "printf 'end\\n' >> b; wc -c < b"], &f)
            .env(OVERALLOCATING.0, OVERALLOCATING.1),
        &[&f],
    );
    r.assert_ok("append");
    let b = std::fs::read(f.join("b")).unwrap();
    assert_eq!(b.len(), data.len() + 4);
    assert!(b[..data.len()] == data[..] && b.ends_with(b"end\n"));
    assert_eq!(
        String::from_utf8_lossy(r.stdout()).trim(),
        (data.len() + 4).to_string()
    );
    // `flexio recover`.
    crashed_file(&f.join("c"), &data, 1 << 20);
    let out = Command::new(flexio())
        .arg("recover")
        .arg(f.join("c"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("trimmed 1048576 -> {}", data.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(std::fs::read(f.join("c")).unwrap() == data);
}

#[test]
fn stdio_and_write_mixed_on_a_redirected_descriptor() {
    let h = helper();
    let t = TestDir::new("stdio");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let spec = Spec::new(h.to_str().unwrap(), &["stdio", "out"], &p);
    plain(&spec).assert_ok("stdio helper (without flex)");
    let r = flex(&spec.in_dir(&f), &[&f]);
    r.assert_ok("stdio helper (under flex)");
    assert_same_file(&p.join("out"), &f.join("out"));
    assert_eq!(ksize(&f.join("out")), 13015);
    r.stats.assert_served(&["pread"], "out");
}

const PY_TRUNCATE_PATH: &str = r#"
import os
with open("f", "wb") as f:
    f.write(b"x" * (4 << 20))
fd = os.open("f", os.O_RDWR)
for i in range(5):
    os.pread(fd, 4096, i * 4096)
os.pwrite(fd, b"y" * 10, 0)
# truncate(path) while a descriptor is open: flex must see the new size.
os.truncate("f", 1000003)
print("fstat", os.fstat(fd).st_size)
print("pread", len(os.pread(fd, 100, 999990)), len(os.pread(fd, 100, 2000000)))
print("pwrite", os.pwrite(fd, b"z" * 100, 999990))
print("size", os.fstat(fd).st_size, os.stat("f").st_size)
os.truncate("f", 3000000)
print("grown", os.fstat(fd).st_size, os.pread(fd, 4, 2999996))
print("end", os.lseek(fd, 0, os.SEEK_END))
os.close(fd)
"#;

#[test]
fn truncate_by_path_while_a_descriptor_is_open() {
    let t = TestDir::new("truncpath");
    let (a, r, p, f) = py_both(&t, "truncate(path)", PY_TRUNCATE_PATH);
    assert!(
        String::from_utf8_lossy(a.stdout()).contains("size 1000090 1000090"),
        "{}",
        String::from_utf8_lossy(a.stdout())
    );
    assert_same_file(&p.join("f"), &f.join("f"));
    r.stats.assert_served(&["pread", "pwrite"], "f");
}

/// An ext4 file system on a loop device, mounted for one test, unmounted on drop: its
/// image shows what reached the "disk" (dirty page-cache pages stay out of it for the
/// 30 s of the kernel's writeback delay).
struct LoopExt4 {
    dir: tempfile::TempDir,
    img: PathBuf,
}

impl LoopExt4 {
    fn new() -> LoopExt4 {
        require("mkfs.ext4", "e2fsprogs");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().with_extension("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&img)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4 failed");
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot loop-mount ext4 (the O_DSYNC test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopExt4 { dir, img }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        let _ = std::fs::remove_file(&self.img);
    }
}

/// Writes on a descriptor opened O_DSYNC (or O_SYNC, or pwritev2 with RWF_DSYNC) are on
/// the disk when the call returns, also when flex serves them from its mapping (and, in
/// atomic mode, as a commit). Checked by finding each written pattern in the file
/// system's image right after the call, while the writer waits.
#[test]
fn o_dsync_writes_are_on_disk_when_they_return() {
    let script = r#"
import os, sys
d, how = sys.argv[1], sys.argv[2]
flags = os.O_RDWR | os.O_CREAT
if how == "dsync": flags |= os.O_DSYNC
if how == "sync": flags |= os.O_SYNC
fd = os.open(os.path.join(d, "f"), flags, 0o644)
os.pwrite(fd, b"\0" * (1 << 20), 0)
os.fsync(fd)
for i in range(3):                      # warm up: flex adopts the file
    os.pwrite(fd, b"w" * 4096, i * 4096)
for i in range(4):
    pat = (b"FLEXDSYNC-%s-%d-" % (how.encode(), i)) * 200
    if how == "rwf":
        os.pwritev(fd, [pat], 65536 * (i + 2), os.RWF_DSYNC)
    else:
        os.pwrite(fd, pat, 65536 * (i + 2))
    print("written", i, flush=True)
    sys.stdin.readline()
os.close(fd)
"#;
    for (how, mode) in [
        ("dsync", ""),
        ("sync", ""),
        ("rwf", ""),
        ("dsync", "atomic"),
        ("rwf", "atomic"),
    ] {
        let fs = LoopExt4::new();
        let stats = fs.dir.path().with_extension("stats");
        let mut c = Command::new(flexio());
        c.args(["run", "--paths"])
            .arg(fs.dir.path())
            .args(["--", "python3", "-c", script])
            .arg(fs.dir.path())
            .arg(how)
            .env("FLEX_STATS", &stats)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if !mode.is_empty() {
            c.env("FLEX_MODE", mode);
        }
        let mut child = c.spawn().unwrap();
        let mut tx = child.stdin.take().unwrap();
        let mut rx = BufReader::new(child.stdout.take().unwrap());
        for i in 0..4 {
            let mut line = String::new();
            rx.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), format!("written {i}"), "{how} {mode}");
            let img = std::fs::read(&fs.img).unwrap();
            let pat = format!("FLEXDSYNC-{how}-{i}-").repeat(200);
            assert!(
                img.windows(pat.len()).any(|w| w == pat.as_bytes()),
                "{how} {mode}: write {i} returned but is not on the disk"
            );
            writeln!(tx, "go").unwrap();
        }
        drop(tx);
        assert!(child.wait().unwrap().success(), "{how} {mode}");
        let st = std::fs::read_to_string(&stats).unwrap();
        assert!(
            st.lines()
                .any(|l| l.contains("python") && l.contains("\"pwrite")),
            "{how} {mode}: flex served no pwrite: {st}"
        );
        let _ = std::fs::remove_file(&stats);
    }
}

/// The system calls of `cat FILE` under strace, by name, with libflex.so preloaded or not.
/// FLEX_PATHS names a directory the program never opens.
fn syscalls_of_cat(t: &TestDir, file: &Path, preload: bool) -> BTreeMap<String, i64> {
    let out = t.join(if preload {
        "flex.strace"
    } else {
        "kernel.strace"
    });
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o"])
        .arg(&out)
        .arg("cat")
        .arg(file)
        .env("FLEX_PATHS", t.join("elsewhere"))
        // cargo's library path would make the loader look for libgcc_s there first.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD");
    if preload {
        c.env("LD_PRELOAD", libflex());
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "strace cat: {o:?}");
    assert_eq!(o.stdout, b"some bytes\n");
    let mut n = BTreeMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        // "[pid ]name(args) = ret"; exit lines ("+++ ...") are no calls.
        let line = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
        if let Some((name, _)) = line.split_once('(') {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                // flex passes the program's fstat as fstat, glibc makes it a newfstatat.
                let name = if name == "fstat" { "newfstatat" } else { name };
                *n.entry(name.to_string()).or_insert(0) += 1;
            }
        }
    }
    n
}

/// A program that opens no file flex manages pays for loading libflex.so and nothing
/// more: the loader's calls for libflex.so and libgcc_s, and the fault handlers the
/// fault-safe copy of each opened path needs. No getpid, no getrandom (hash keys), no
/// getcwd, no /proc or /sys, no thread.
#[test]
fn a_program_that_opens_no_managed_file_pays_only_for_loading() {
    require("strace", "strace");
    let t = TestDir::new("footprint");
    let file = t.join("data");
    std::fs::write(&file, b"some bytes\n").unwrap();
    let kernel = syscalls_of_cat(&t, &file, false);
    let flex = syscalls_of_cat(&t, &file, true);
    // What loading two more libraries costs at most (open, read the header, stat, map
    // four segments, close, protect the relocated ones), and the SIGSEGV/SIGBUS handlers.
    let allowed: BTreeMap<&str, i64> = [
        ("openat", 2),
        ("read", 2),
        ("newfstatat", 2),
        ("pread64", 4),
        ("mmap", 10),
        ("mprotect", 3),
        ("close", 2),
        ("rt_sigaction", 2),
        ("rt_sigprocmask", 2),
    ]
    .into_iter()
    .collect();
    let mut extra = Vec::new();
    for (name, &f) in &flex {
        let more = f - kernel.get(name).copied().unwrap_or(0);
        if more > allowed.get(name.as_str()).copied().unwrap_or(0) {
            extra.push(format!("{name} +{more}"));
        }
    }
    assert!(
        extra.is_empty(),
        "libflex.so added system calls to a program that opens no managed file: {extra:?}\n\
         kernel: {kernel:?}\nflex: {flex:?}"
    );
}
