//! libflex.so exports exactly the calls crates/flex-preload/INTERPOSED documents: a
//! function added without a line there, a line without an export (a name the linker
//! dropped, as it once dropped the C `execl`, `execlp` and `execle`), and the test fails.
//!
//! Needs `nm` (Debian package binutils). Build the workspace first (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn documented() -> BTreeSet<String> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flex-preload/INTERPOSED");
    let text =
        std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("read {}: {e}", list.display()));
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let name = line.split('#').next().unwrap_or("").trim();
        if !name.is_empty() {
            assert!(names.insert(name.to_string()), "{name} is listed twice");
        }
    }
    names
}

/// Functions libflex.so defines in its dynamic symbol table.
fn exported() -> BTreeSet<String> {
    require("nm", "binutils");
    let lib = flexio().with_file_name("libflex.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm {}: {}",
        lib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "ADDRESS TYPE NAME": T/t text, W/w weak, i indirect.
            let mut f = l.split_whitespace();
            let (_, ty, name) = (f.next()?, f.next()?, f.next()?);
            matches!(ty, "T" | "t" | "W" | "w" | "i").then(|| name.to_string())
        })
        .collect()
}

#[test]
fn exports_match_the_documented_list() {
    let (doc, exp) = (documented(), exported());
    let undocumented: Vec<_> = exp.difference(&doc).collect();
    let missing: Vec<_> = doc.difference(&exp).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "libflex.so exports functions crates/flex-preload/INTERPOSED lacks: {undocumented:?}; \
         INTERPOSED lists functions libflex.so does not export: {missing:?}"
    );
}

/// A panic inside the engine never reaches the program: the entry point answers -1/EIO
/// and the program goes on (here: its writes after the failed fsync land). libflex.so
/// carries its own unwinder (libgcc_eh, linked in), so this also checks that one.
#[test]
fn a_panic_in_the_engine_is_eio_and_the_program_goes_on() {
    require("python3", "python3");
    let t = TestDir::new("panic");
    let script = r#"
import os, errno
fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"before\n")
for _ in range(3):
    assert os.pread(fd, 6, 0) == b"before"  # flex takes the descriptor over
try:
    os.fsync(fd)
    print("fsync returned")
except OSError as e:
    print("fsync", errno.errorcode[e.errno])
os.write(fd, b"after\n")
os.close(fd)
print(open("f").read().split())
"#;
    let r = flex(
        &Spec::new("python3", &["-c", script], &t.join("")).env("FLEX_TEST_PANIC", "fsync"),
        &[&t.join("")],
    );
    r.assert_ok("panic");
    let out = String::from_utf8_lossy(r.stdout()).to_string();
    assert!(out.contains("fsync EIO"), "{out}");
    assert!(out.contains("['before', 'after']"), "{out}");
}

/// libflex.so loads no library a program would not load anyway: libgcc_s (the shared
/// unwinder) cost every exec its load and its constructor's cpuid probing.
#[test]
fn a_program_under_libflex_loads_no_libgcc_s() {
    let t = TestDir::new("maps");
    let r = flex(
        &Spec::new("cat", &["/proc/self/maps"], &t.join("")),
        &[&t.join("")],
    );
    r.assert_ok("cat maps");
    let maps = String::from_utf8_lossy(r.stdout()).to_string();
    assert!(maps.contains("libflex.so"), "not under libflex: {maps}");
    assert!(!maps.contains("libgcc_s"), "{maps}");
}
