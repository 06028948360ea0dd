//! Real programs under `flexio run`, each compared with the same run without FLEX: the
//! same stdout bytes, the same resulting files and the same exit code; FLEX_STATS proves
//! that flex served the IO (calls served from the mapping, the file listed as mapped).
//!
//! Needs the Debian packages coreutils, grep, gzip, tar, python3, sqlite3, bash. A missing
//! program fails the test (never skips it). Build the workspace first (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::*;
use std::path::Path;

/// Write the same inputs into both directories.
fn put(dirs: &[&Path], name: &str, data: &[u8]) {
    for d in dirs {
        let p = d.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, data).expect("write input");
    }
}

/// Run `spec` in `plain_dir` without flex and in `flex_dir` under flex; compare.
fn both(what: &str, spec: &Spec, plain_dir: &Path, flex_dir: &Path) -> (Ran, Ran) {
    let a = plain(&spec.in_dir(plain_dir));
    let b = flex(&spec.in_dir(flex_dir), &[flex_dir]);
    a.assert_ok(&format!("{what} (without flex)"));
    assert_same_output(what, &a, &b);
    (a, b)
}

#[test]
fn cat_large_and_small_files() {
    require("cat", "coreutils");
    let t = TestDir::new("cat");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "big.bin", &noise((4 << 20) + 4321, 1));
    put(&[&p, &f], "small.txt", b"one small line\n");
    put(&[&p, &f], "empty", b"");
    let spec = Spec::new("cat", &["big.bin", "small.txt", "empty", "big.bin"], &p);
    let (_, r) = both("cat", &spec, &p, &f);
    r.stats.assert_served(&["read"], "big.bin");
    // Also through stdin redirected by the shell (the description lands on fd 0).
    let spec = Spec::new("bash", &["-c", "cat - small.txt < big.bin"], &p);
    both("cat < file", &spec, &p, &f);
}

#[test]
fn dd_with_several_block_sizes() {
    require("dd", "coreutils");
    let t = TestDir::new("dd");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "in.bin", &noise((5 << 20) + 1234, 2));
    for bs in ["512", "3000", "4096", "65536", "1M"] {
        let of = format!("out-{bs}.bin");
        let spec = Spec::new(
            "dd",
            &[
                "if=in.bin",
                &format!("of={of}"),
                &format!("bs={bs}"),
                "status=none",
            ],
            &p,
        );
        let (_, r) = both(&format!("dd bs={bs}"), &spec, &p, &f);
        assert_same_file(&p.join(&of), &f.join(&of));
        assert_same_file(&f.join("in.bin"), &f.join(&of));
        r.stats.assert_served(&["read"], "in.bin");
        r.stats.assert_extended_by_kernel(&of);
    }
    // skip/seek/count into an existing file without truncating it, then a shrinking run.
    put(&[&p, &f], "target.bin", &noise(3 << 20, 3));
    for args in [
        &[
            "if=in.bin",
            "of=target.bin",
            "bs=4096",
            "skip=10",
            "seek=100",
            "count=300",
            "conv=notrunc",
            "status=none",
        ][..],
        &[
            "if=in.bin",
            "of=target.bin",
            "bs=8192",
            "seek=7",
            "count=50",
            "status=none",
        ][..],
        &[
            "if=target.bin",
            "of=target2.bin",
            "ibs=1000",
            "obs=7000",
            "status=none",
        ][..],
    ] {
        let spec = Spec::new("dd", args, &p);
        both(&format!("dd {args:?}"), &spec, &p, &f);
        assert_same_file(&p.join("target.bin"), &f.join("target.bin"));
    }
    assert_same_file(&p.join("target2.bin"), &f.join("target2.bin"));
    // dd to stdout and from stdin.
    let spec = Spec::new(
        "dd",
        &["if=in.bin", "bs=100000", "skip=3", "status=none"],
        &p,
    );
    both("dd to stdout", &spec, &p, &f);
    let spec = Spec::new(
        "bash",
        &["-c", "dd of=fromstdin.bin bs=4k status=none < in.bin"],
        &p,
    );
    both("dd from stdin", &spec, &p, &f);
    assert_same_file(&p.join("fromstdin.bin"), &f.join("fromstdin.bin"));
}

#[test]
fn head_and_tail_byte_counts() {
    require("head", "coreutils");
    require("tail", "coreutils");
    let t = TestDir::new("headtail");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "in.bin", &noise((3 << 20) + 777, 4));
    put(&[&p, &f], "text.txt", &text(50_000));
    for (prog, args) in [
        ("head", &["-c", "2500001", "in.bin"][..]),
        ("head", &["-c", "-100000", "in.bin"][..]),
        ("head", &["-n", "30000", "text.txt"][..]),
        ("tail", &["-c", "2500001", "in.bin"][..]),
        ("tail", &["-c", "+1000", "in.bin"][..]),
        ("tail", &["-n", "20000", "text.txt"][..]),
    ] {
        let spec = Spec::new(prog, args, &p);
        let (_, r) = both(&format!("{prog} {args:?}"), &spec, &p, &f);
        let file = args[args.len() - 1];
        r.stats.assert_served(&["read"], file);
    }
}

#[test]
fn grep_on_a_large_text_file() {
    require("grep", "grep");
    let t = TestDir::new("grep");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "text.txt", &text(200_000));
    for args in [
        &["-n", "needle", "text.txt"][..],
        &["-c", "haystack", "text.txt"][..],
        &["-v", "-c", "alpha", "text.txt"][..],
        &["-E", "-o", "^0001[0-9]+ [a-z]+ needle", "text.txt"][..],
    ] {
        let spec = Spec::new("grep", args, &p);
        let (_, r) = both(&format!("grep {args:?}"), &spec, &p, &f);
        r.stats.assert_served(&["read"], "text.txt");
    }
    // No match: exit code 1 on both sides.
    let spec = Spec::new("grep", &["-c", "no such words", "text.txt"], &p);
    let a = plain(&spec);
    let b = flex(&spec.in_dir(&f), &[&f]);
    assert_eq!(a.code(), Some(1));
    assert_same_output("grep without a match", &a, &b);
}

#[test]
fn gzip_gunzip_round_trip() {
    require("gzip", "gzip");
    let t = TestDir::new("gzip");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let mut data = text(100_000);
    data.extend_from_slice(&noise(1 << 20, 5));
    put(&[&p, &f], "data.bin", &data);
    let spec = Spec::new("gzip", &["-k", "-n", "-6", "data.bin"], &p);
    let (_, r) = both("gzip", &spec, &p, &f);
    assert_same_file(&p.join("data.bin.gz"), &f.join("data.bin.gz"));
    r.stats.assert_served(&["read"], "data.bin");
    r.stats.assert_extended_by_kernel("data.bin.gz");
    // Decompress to stdout, then in place (the original removed first).
    let spec = Spec::new("gzip", &["-d", "-c", "data.bin.gz"], &p);
    let (_, r) = both("gzip -dc", &spec, &p, &f);
    assert_eq!(r.stdout(), &data[..], "gzip -dc under flex");
    std::fs::remove_file(p.join("data.bin")).unwrap();
    std::fs::remove_file(f.join("data.bin")).unwrap();
    let spec = Spec::new("gunzip", &["data.bin.gz"], &p);
    let (_, r) = both("gunzip", &spec, &p, &f);
    assert_eq!(
        std::fs::read(f.join("data.bin")).unwrap(),
        data,
        "gunzip under flex"
    );
    assert_same_file(&p.join("data.bin"), &f.join("data.bin"));
    r.stats.assert_served(&["read"], "data.bin.gz");
    r.stats.assert_extended_by_kernel("data.bin");
}

#[test]
fn tar_create_and_extract_round_trip() {
    require("tar", "tar");
    let t = TestDir::new("tar");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let files: &[(&str, usize)] = &[
        ("tree/empty", 0),
        ("tree/one", 1),
        ("tree/a/511", 511),
        ("tree/a/page", 4096),
        ("tree/a/b/mib", (1 << 20) + 3),
        ("tree/a/b/big", 3 << 20),
        ("tree/c/text", 200_000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        put(&[&p, &f], name, &noise(*len, 10 + i as u64));
    }
    let create = [
        "--format=gnu",
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-cf",
        "arch.tar",
        "tree",
    ];
    let spec = Spec::new("tar", &create, &p);
    let (_, r) = both("tar c", &spec, &p, &f);
    assert_same_file(&p.join("arch.tar"), &f.join("arch.tar"));
    r.stats.assert_served(&["read"], "big");
    r.stats.assert_extended_by_kernel("arch.tar");
    std::fs::create_dir(p.join("x")).unwrap();
    std::fs::create_dir(f.join("x")).unwrap();
    let spec = Spec::new("tar", &["-xf", "arch.tar", "-C", "x"], &p);
    let (_, r) = both("tar x", &spec, &p, &f);
    r.stats.assert_served(&["read"], "arch.tar");
    let src = tree(&f.join("tree"));
    let out = tree(&f.join("x/tree"));
    assert_eq!(
        src.keys().collect::<Vec<_>>(),
        out.keys().collect::<Vec<_>>(),
        "extracted tree lists other files"
    );
    for (k, v) in &src {
        assert!(out[k] == *v, "extracted {} differs", k.display());
    }
    assert!(tree(&p.join("x")) == tree(&f.join("x")));
    // List the archive (reads through flex, output compared).
    let spec = Spec::new("tar", &["-tvf", "arch.tar"], &p);
    both("tar t", &spec, &p, &f);
}

const PY_FILE_IO: &str = r#"
import hashlib, os, sys
out = []
def tr(*a):
    out.append(" ".join(str(x) for x in a))

p = "data.bin"
with open(p, "wb") as f:
    for i in range(3000):
        f.write(bytes([i % 251]) * (i % 700 + 1))
    tr("tell", f.tell())
    f.seek(100); f.write(b"X" * 50)
    f.seek(0, 2); tr("end", f.tell())
    f.flush()
    tr("fstat", os.fstat(f.fileno()).st_size)
    f.truncate(600000); tr("truncate", f.tell(), os.fstat(f.fileno()).st_size)
tr("stat", os.stat(p).st_size)
with open(p, "ab") as f:
    for i in range(500):
        f.write(b"appended %d\n" % i)
        if i % 50 == 0:
            f.flush()
    tr("append tell", f.tell())
with open(p, "r+b") as f:
    f.seek(-5000, 2); tr("tail", hashlib.sha256(f.read(100)).hexdigest())
    f.seek(10); f.write(b"middle"); f.truncate()
    tr("r+ truncate", os.fstat(f.fileno()).st_size, f.tell())
    f.seek(0, 2); f.write(b"Z" * 70000)
    f.seek(0); tr("r+ read", len(f.read()))
fd = os.open(p, os.O_RDWR)
tr("pwrite", os.pwrite(fd, b"PW" * 1000, 200000))
tr("pread", hashlib.sha256(os.pread(fd, 3000, 199000)).hexdigest())
tr("pread past", len(os.pread(fd, 100, 10**7)))
tr("seek end", os.lseek(fd, 0, os.SEEK_END))
tr("seek cur", os.lseek(fd, -10, os.SEEK_CUR))
tr("read at end", len(os.read(fd, 100)))
os.ftruncate(fd, 250000)
tr("after ftruncate", os.fstat(fd).st_size, os.lseek(fd, 0, os.SEEK_CUR), len(os.read(fd, 10)))
tr("hole pwrite", os.pwrite(fd, b"far", 400000), os.fstat(fd).st_size)
tr("hole read", os.pread(fd, 8, 399998))
os.close(fd)
h = hashlib.sha256()
with open(p, "rb", buffering=0) as f:
    n = 0
    while True:
        b = f.read(4093)
        if not b:
            break
        n += 1
        h.update(b)
tr("raw reads", n, h.hexdigest())
with open("text.txt", "w") as f:
    for i in range(20000):
        print("line", i, "of text", file=f)
with open("text.txt", "a") as f:
    f.write("appended line\n")
with open("text.txt") as f:
    lines = f.readlines()
tr("lines", len(lines), lines[12345].strip(), lines[-1].strip())
with open("text.txt", "w+") as f:
    f.write("rewritten\n" * 1000); f.seek(0); tr("w+", len(f.read()))
with open(p, "rb") as f:
    tr("final", hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_size)
print("\n".join(out))
"#;

#[test]
fn python_file_io() {
    require("python3", "python3");
    let t = TestDir::new("python");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    // Each of the script's descriptors does only a few IO calls: take them over at the
    // first, so that flex (not the kernel behind a lazy descriptor) serves the script.
    let spec = Spec::new("python3", &["-c", PY_FILE_IO], &p).env("FLEX_ADOPT_AFTER", "1");
    let (a, r) = both("python file IO", &spec, &p, &f);
    assert!(
        String::from_utf8_lossy(a.stdout()).contains("final"),
        "script did not finish"
    );
    assert_same_file(&p.join("data.bin"), &f.join("data.bin"));
    assert_same_file(&p.join("text.txt"), &f.join("text.txt"));
    r.stats.assert_served(&["write", "pwrite"], "data.bin");
    r.stats.assert_served(&["read", "pread"], "data.bin");
}

/// A stdio program: md5sum reads its files through fopen + fread, whose glibc-internal
/// reads flex never sees; the stream is flex's (a cookie stream over the engine) because
/// fopen takes the lazily opened descriptor over at once.
#[test]
fn md5sum_reads_through_stdio_streams() {
    require("md5sum", "coreutils");
    let t = TestDir::new("md5sum");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "big.bin", &noise((2 << 20) + 77, 9));
    put(&[&p, &f], "small.txt", b"tiny\n");
    let spec = Spec::new("md5sum", &["big.bin", "small.txt", "big.bin"], &p);
    let (_, r) = both("md5sum", &spec, &p, &f);
    r.stats.assert_served(&["read"], "big.bin");
}

/// A program under valgrind, which hides the vDSO from its guest: libflex.so reads its
/// clock through glibc (rustix's own vDSO lookup faulted there and killed every program
/// at its first open) and serves the program's reads as anywhere else.
#[test]
fn a_program_under_valgrind_runs_with_flex() {
    require("valgrind", "valgrind");
    require("md5sum", "coreutils");
    let t = TestDir::new("valgrind");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "big.bin", &noise((1 << 20) + 5, 3));
    let spec = Spec::new(
        "valgrind",
        &["-q", "--error-exitcode=97", "md5sum", "big.bin", "big.bin"],
        &p,
    );
    let (_, r) = both("md5sum under valgrind", &spec, &p, &f);
    r.stats.assert_served(&["read"], "big.bin");
}

/// A rollback journal's life (written front to back, its header rewritten once, synced,
/// deleted) through a lazy descriptor never maps the file: the appends the kernel served
/// before flex took the descriptor over do not count towards FLEX_ADOPT_AFTER (they did
/// once, and every SQLite transaction paid an mmap and an munmap).
#[test]
fn a_journal_written_once_through_a_lazy_descriptor_is_never_mapped() {
    require("python3", "python3");
    let t = TestDir::new("journal");
    let f = t.sub("flex");
    let script = r#"
import os
for i in range(20):
    fd = os.open("db-journal", os.O_RDWR | os.O_CREAT, 0o644)
    for k in range(6):
        os.pwrite(fd, b"p" * 1024, 512 + k * 1024)
    os.pwrite(fd, b"header", 0)
    os.fsync(fd)
    os.close(fd)
    os.unlink("db-journal")
print("done")
"#;
    let r = flex(&Spec::new("python3", &["-c", script], &f), &[&f]);
    r.assert_ok("journal");
    let maps = r.stats.counter("maps");
    assert_eq!(maps, 0, "a journal was mapped: {}", r.stats.dump());
    assert!(r.stats.served("open") >= 20, "{}", r.stats.dump());
}

/// SQLite's journal as it really goes: fstat after the open, written front to back, read
/// past its end, its header rewritten, synced, deleted. Every call but the one rewrite is
/// at or past the end the process knows, which flex would pass to the kernel anyway, so the
/// descriptor stays lazy: no take-over (no F_GETFL, readlink, fstat, fstatfs, inode per
/// transaction). A file whose known contents are rewritten in place twice is taken over.
#[test]
fn writes_past_the_known_end_leave_a_descriptor_to_the_kernel() {
    require("python3", "python3");
    let t = TestDir::new("past-end");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let script = r#"
import os
for i in range(20):
    fd = os.open("db-journal", os.O_RDWR | os.O_CREAT, 0o644)
    assert os.fstat(fd).st_size == 0
    off = 0
    for n in (512, 4, 4096, 4, 4, 4096, 4):
        os.pwrite(fd, bytes([65 + i]) * n, off)
        off += n
    assert os.pread(fd, 8, off + 500) == b""
    os.pwrite(fd, b"header%02d" % i, 0)
    os.fsync(fd)
    os.close(fd)
    if i < 19:
        os.unlink("db-journal")
fd = os.open("data", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.pwrite(fd, b"x" * 8192, 0)
os.pwrite(fd, b"y" * 100, 50)
os.pwrite(fd, b"z" * 100, 4000)
os.pwrite(fd, b"w" * 100, 6000)
print(os.pread(fd, 20, 40), os.pread(fd, 20, 3990))
os.close(fd)
print("done")
"#;
    let spec = Spec::new("python3", &["-c", script], &p);
    let (a, r) = both("writes past the end", &spec, &p, &f);
    assert!(String::from_utf8_lossy(a.stdout()).contains("done"));
    assert_same_file(&p.join("db-journal"), &f.join("db-journal"));
    assert_same_file(&p.join("data"), &f.join("data"));
    let adoptions = r.stats.counter("adoptions");
    // `data` only: its O_TRUNC open said its end, and two writes fell inside it.
    assert_eq!(adoptions, 1, "{}", r.stats.dump());
    assert!(!r.stats.has_file("db-journal"), "{}", r.stats.dump());
    r.stats.assert_served(&["pread"], "data");
}

/// A log written front to back with write(2), after an O_TRUNC open, and one appended to
/// through O_APPEND (a shell's `>>`), are written where flex would pass the calls to the
/// kernel anyway (at or past the end the process knows): their descriptors stay lazy,
/// one system call per write, no take-over. A file rewritten in place after an lseek is
/// taken over (the lseek loses the position, and its writes count).
#[test]
fn sequential_writes_and_appends_leave_a_descriptor_to_the_kernel() {
    require("python3", "python3");
    let t = TestDir::new("sequential");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let script = r#"
import os
fd = os.open("log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(200):
    assert os.write(fd, b"line %04d\n" % i) == 10
os.close(fd)
for r in range(3):
    fd = os.open("log", os.O_WRONLY | os.O_APPEND)
    for i in range(50):
        os.write(fd, b"more %d %04d\n" % (r, i))
    os.pwrite(fd, b"pwrite appends\n", 0)
    os.close(fd)
fd = os.open("out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(100):
    os.write(fd, bytes([48 + i % 10]) * 100)
assert os.read(fd, 10) == b""
os.close(fd)
fd = os.open("data", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"x" * 8192)
os.lseek(fd, 50, os.SEEK_SET)
for c in b"abcd":
    os.write(fd, bytes([c]) * 100)
print(os.pread(fd, 20, 40), os.pread(fd, 20, 390))
os.close(fd)
print("done")
"#;
    let spec = Spec::new("python3", &["-c", script], &p);
    let (a, r) = both("sequential writes", &spec, &p, &f);
    assert!(String::from_utf8_lossy(a.stdout()).contains("done"));
    for name in ["log", "out", "data"] {
        assert_same_file(&p.join(name), &f.join(name));
    }
    // `data` only.
    assert_eq!(r.stats.counter("adoptions"), 1, "{}", r.stats.dump());
    for name in ["log", "out"] {
        assert!(!r.stats.has_file(name), "{name}: {}", r.stats.dump());
    }
    r.stats.assert_served(&["pread"], "data");
}

/// Lazy descriptors (FLEX_ADOPT_AFTER calls served by the kernel before flex looks at the
/// file): taken over at the third call, or when duplicated (dup, dup2 onto another
/// number), with the kernel's offset; left to the kernel for good once fork shares their
/// description with another process.
const PY_LAZY: &str = r#"
import os
with open("f", "wb") as w:
    w.write(bytes(range(256)) * 256)
out = []
def rd(fd, n):
    out.append((len(out), os.read(fd, n).hex()[:16], os.lseek(fd, 0, os.SEEK_CUR)))
fd = os.open("f", os.O_RDONLY)
rd(fd, 3); rd(fd, 5)
d = os.dup(fd)
for _ in range(3):
    rd(fd, 7); rd(d, 11)
a = os.open("f", os.O_RDONLY)
for n in (1, 2, 4096, 4096, 9, 70000):
    rd(a, n)
b = os.open("f", os.O_RDONLY)
rd(b, 100); rd(b, 100)
pid = os.fork()
if pid == 0:
    for _ in range(3):
        os.read(b, 1000)
    os._exit(0)
os.waitpid(pid, 0)
rd(b, 10); rd(b, 10); rd(b, 10)
c = os.open("f", os.O_RDWR)
rd(c, 10); rd(c, 10)
os.write(c, b"XYZ")
out.append(("after write", os.lseek(c, 0, os.SEEK_CUR)))
rd(c, 5)
g = os.open("g", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(5):
    os.write(g, b"line %d." % i)
out.append(("g", os.fstat(g).st_size, os.lseek(g, 0, os.SEEK_CUR)))
e = os.open("f", os.O_RDONLY)
rd(e, 4); rd(e, 4)
os.dup2(e, 50)
rd(e, 4); rd(50, 4)
for x in out:
    print(x)
print("final")
"#;

#[test]
fn lazy_descriptors_keep_the_kernels_offsets() {
    require("python3", "python3");
    let t = TestDir::new("lazy");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let spec = Spec::new("python3", &["-c", PY_LAZY], &p);
    let (a, r) = both("lazy descriptors", &spec, &p, &f);
    assert!(
        String::from_utf8_lossy(a.stdout()).contains("final"),
        "script did not finish"
    );
    assert_same_file(&p.join("f"), &f.join("f"));
    assert_same_file(&p.join("g"), &f.join("g"));
    // The six reads of `a` (and `c`'s) were taken over and served from the mapping.
    r.stats.assert_served(&["read"], "f");
    assert!(
        r.stats.dump().contains("lazy:"),
        "no lazy open counted: {}",
        r.stats.dump()
    );
}

fn sqlite_script(journal: &str) -> String {
    format!(
        "PRAGMA journal_mode={journal};
PRAGMA cache_size=20;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, s TEXT, v BLOB);
CREATE INDEX tk ON t(k);
BEGIN;
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 20000)
  INSERT INTO t(k, s, v) SELECT (i * 7919) % 1000, 'row ' || i, zeroblob(i % 300) FROM c;
COMMIT;
UPDATE t SET s = s || ' updated', v = randomblob(0) WHERE k % 3 = 0;
DELETE FROM t WHERE id % 10 = 0;
BEGIN;
INSERT INTO t(k, s, v) SELECT k + 1, s || ' copy', v FROM t WHERE id < 3000;
ROLLBACK;
BEGIN;
INSERT INTO t(k, s, v) SELECT k + 2, s || ' again', v FROM t WHERE id < 5000;
COMMIT;
CREATE TABLE u AS SELECT k, count(*) AS n, sum(length(s)) AS l FROM t GROUP BY k;
{{QUERY}}
PRAGMA integrity_check;
"
    )
}

const SQLITE_QUERY: &str =
    "SELECT count(*), sum(id), sum(k), sum(length(s)), sum(length(v)) FROM t;
SELECT k, n, l FROM u ORDER BY k LIMIT 20;
SELECT id, k, s FROM t WHERE k BETWEEN 500 AND 502 ORDER BY id LIMIT 30;";

fn sqlite_case(journal: &str) {
    require("sqlite3", "sqlite3");
    let t = TestDir::new(&format!("sqlite-{journal}"));
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    let script = sqlite_script(journal).replace("{QUERY}", SQLITE_QUERY);
    let spec = Spec::new("sqlite3", &["db.sqlite"], &p).stdin(script.as_bytes());
    let (a, r) = both(&format!("sqlite3 ({journal})"), &spec, &p, &f);
    let text = String::from_utf8_lossy(a.stdout()).to_string();
    assert!(text.ends_with("ok\n"), "integrity check: {text}");
    r.stats
        .assert_served(&["pwrite", "pread", "write", "read"], "db.sqlite");
    // The database flex wrote, read by sqlite3 without flex, answers as the plain one.
    let q = format!("{SQLITE_QUERY}\nPRAGMA integrity_check;");
    let qa = plain(&Spec::new("sqlite3", &["db.sqlite"], &p).stdin(q.as_bytes()));
    let qb = plain(&Spec::new("sqlite3", &["db.sqlite"], &f).stdin(q.as_bytes()));
    qa.assert_ok("sqlite3 query (plain db)");
    assert_same_output("sqlite3 query of the flex-written db", &qa, &qb);
    // And read back under flex, after the kernel wrote to it.
    let qc = flex(
        &Spec::new("sqlite3", &["db.sqlite"], &f).stdin(q.as_bytes()),
        &[&f],
    );
    assert_same_output("sqlite3 query under flex", &qa, &qc);
    assert!(
        !f.join("db.sqlite-wal").exists() || ksize(&f.join("db.sqlite-wal")) == 0,
        "WAL left behind after a clean exit"
    );
}

#[test]
fn sqlite3_wal() {
    sqlite_case("WAL");
}

#[test]
fn sqlite3_rollback_journal() {
    sqlite_case("DELETE");
}

const BASH_REDIRECTIONS: &str = r#"
set -e
echo first > out.txt
for i in $(seq 1 200); do
  echo "builtin $i" >> out.txt
  /bin/echo "external $i" >> out.txt
done
exec 3>>log.txt
for i in $(seq 1 150); do
  echo "fd3 builtin $i" >&3
  printf 'printf %d\n' "$i" >&3
  /bin/echo "fd3 external $i" >&3
  cat small.txt >&3
done
exec 3>&-
{ echo a; /bin/echo b; echo c; cat in.txt; echo d; } > grouped.txt
n=0
while read -r line; do
  n=$((n+1))
  echo "got $line"
done < in.txt > readloop.txt
echo "lines $n"
cat < in.txt > copied.txt
exec 4<in.txt
read -r first <&4
head -c 100 <&4 > part.txt
read -r after <&4
echo "first=$first after=$after"
exec 4<&-
exec 5<>rw.txt
echo "hello world" >&5
cat in.txt >&5
exec 5<&-
wc -c < in.txt
wc -c < out.txt
"#;

#[test]
fn bash_redirections() {
    require("bash", "bash");
    let t = TestDir::new("bash");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    put(&[&p, &f], "small.txt", b"a small file\n");
    put(&[&p, &f], "in.txt", &text(3000));
    let spec = Spec::new("bash", &["-c", BASH_REDIRECTIONS], &p);
    let (_, r) = both("bash redirections", &spec, &p, &f);
    for name in [
        "out.txt",
        "log.txt",
        "grouped.txt",
        "readloop.txt",
        "copied.txt",
        "part.txt",
        "rw.txt",
    ] {
        assert_same_file(&p.join(name), &f.join(name));
    }
    r.stats.assert_served(&["read"], "in.txt");
}

/// A sparse 1 GiB file with three data blocks, read whole by `cat` and archived by
/// `tar --sparse`: reading through flex must allocate nothing (a read fault on a tmpfs
/// hole allocates a page, the kernel's read of a hole does not), so st_blocks, the data
/// extents tar finds with SEEK_DATA/SEEK_HOLE and the archive's size are the kernel's.
#[test]
fn sparse_file_read_by_cat_and_tar_stays_sparse() {
    require("cat", "coreutils");
    require("tar", "tar");
    let t = TestDir::new("sparse");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    for d in [&p, &f] {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(d.join("sparse.img")).expect("create");
        file.set_len(1 << 30).expect("set_len");
        for (i, at) in [0u64, (300 << 20) + 123, (1 << 30) - 5000]
            .into_iter()
            .enumerate()
        {
            file.write_all_at(&noise(4096, 40 + i as u64), at)
                .expect("write a data block");
        }
    }
    // Some file systems (sshfs) store every byte: there is no hole to keep.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(p.join("sparse.img"))
        .expect("stat")
        .blocks();
    if allocated >= 1024 {
        eprintln!("skipped: this file system allocated {allocated} blocks for a sparse file");
        return;
    }
    let script = "cat sparse.img > /dev/null && cat sparse.img sparse.img | wc -c && \
                  tar --format=gnu --sparse --mtime=@0 -cf - sparse.img | wc -c && \
                  stat -c '%s %b' sparse.img";
    let spec = Spec::new("bash", &["-c", script], &p);
    let (a, r) = both("cat and tar --sparse of a sparse file", &spec, &p, &f);
    r.stats.assert_served(&["read"], "sparse.img");
    // The plain run's numbers, for the record: the file stayed sparse there.
    let out = String::from_utf8_lossy(a.stdout()).to_string();
    let blocks: u64 = out
        .split_whitespace()
        .last()
        .and_then(|b| b.parse().ok())
        .expect("st_blocks in the output");
    assert!(blocks < 1024, "the plain run filled the holes? {out}");
    assert_eq!(ksize(&f.join("sparse.img")), 1 << 30);
}
