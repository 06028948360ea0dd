//! Bad pointers (issue 11): path, mode, exec, buffer, iovec, offset and struct pointers
//! that point at unreadable memory (NULL, `(char*)1`, kernel and non-canonical addresses,
//! a PROT_NONE page, a string running into one without a NUL) must get from libflex.so
//! exactly what they get without it: the kernel's -1/EFAULT (or ENAMETOOLONG), or libc's
//! own crash where libc itself reads the string (fopen's mode, execvp's file). Valid
//! strings ending right before a PROT_NONE page, 4095 bytes long, or 4096 (too long),
//! behave as without flex too, and the valid ones are served by flex.
//!
//! The helper (tests/bad_pointers.c, compiled with `cc`) makes every call in a forked child
//! and prints how each child ended; the run without the preload and the one under
//! `flexio run --paths <dir>` must print the same lines. Build the workspace first.

#[path = "common/run.rs"]
mod run;

use run::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bad_pointers_helper() -> PathBuf {
    require("cc", "gcc");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_pointers.c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "flex-bad-pointers-{}-{}",
        std::process::id(),
        unique_id()
    ));
    let o = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        o.status.success(),
        "cc failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn unique_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn setup(dir: &Path) {
    std::fs::write(dir.join("f"), noise(4096, 11)).expect("write f");
    std::fs::write(dir.join("g"), b"g").expect("write g");
}

#[test]
fn bad_pointers_get_the_kernels_answer() {
    let helper = bad_pointers_helper();
    let prog = helper.to_str().expect("utf-8 path");
    let t = TestDir::new("badptr");
    let (p, f) = (t.sub("plain"), t.sub("flex"));
    setup(&p);
    setup(&f);
    let a = plain(&Spec::new(prog, &[], &p));
    a.assert_ok("bad pointers (without flex)");
    let b = flex(&Spec::new(prog, &[], &f), &[&f]);
    let _ = std::fs::remove_file(&helper);

    let (pa, pb) = (
        String::from_utf8_lossy(a.stdout()),
        String::from_utf8_lossy(b.stdout()),
    );
    // sigaction is the one known difference: glibc's copies `act` into the kernel's layout
    // itself (and `old` out of it), so a bad pointer crashes it; flex keeps the actions of
    // SIGSEGV/SIGBUS in its own table and answers -1/EFAULT like the system call.
    let efault = format!("exit {}", libc::EFAULT);
    let sigaction = |x: &str, y: &str| {
        x.starts_with("fd sigaction_")
            && (x.ends_with(": signal 11") || x.ends_with(&efault))
            && y.ends_with(&efault)
    };
    // Every differing line, not just the first: each is one call flex gets wrong.
    let diffs: Vec<String> = pa
        .lines()
        .zip(pb.lines())
        .filter(|(x, y)| x != y && !sigaction(x, y))
        .map(|(x, y)| format!("  without flex: {x}\n  under flex:   {y}"))
        .collect();
    assert!(
        diffs.is_empty() && pa.lines().count() == pb.lines().count(),
        "{} calls differ ({} vs {} lines; flex exit {:?}):\n{}\nflex stderr: {}",
        diffs.len(),
        pa.lines().count(),
        pb.lines().count(),
        b.out.status,
        diffs.join("\n"),
        String::from_utf8_lossy(&b.out.stderr)
    );
    b.assert_ok("bad pointers (under flex)");

    // The checks themselves ran (and the kernel said EFAULT where it had to).
    assert!(pa.contains(&format!("pre open NULL: {efault}")), "{pa}");
    assert!(
        pa.contains(&format!("post open prot_none: {efault}")),
        "{pa}"
    );
    assert!(
        pa.contains(&format!("post open runs_into_none_4095: {efault}")),
        "{pa}"
    );
    let toolong = format!("exit {}", libc::ENAMETOOLONG);
    assert!(
        pa.contains(&format!("post open runs_into_none_4096: {toolong}")),
        "{pa}"
    );
    assert!(
        pa.contains(&format!("post open edge_long4096: {toolong}")),
        "{pa}"
    );
    assert!(pa.contains("post open edge_long4095: exit 0"), "{pa}");
    assert!(pa.contains("post open edge_f: exit 0"), "{pa}");
    assert!(pa.contains("edge opens: 1 1"), "{pa}");
}

/// The valid strings next to a PROT_NONE page (a path ending at the page end, a 4095-byte
/// path spanning two pages up to it, an fopen mode at the page end) are read whole: flex
/// serves the three opens itself.
#[test]
fn page_edge_strings_are_served() {
    let helper = bad_pointers_helper();
    let t = TestDir::new("badptr-edge");
    let d = t.sub("flex");
    setup(&d);
    let b = flex(&Spec::new(helper.to_str().unwrap(), &["edge"], &d), &[&d]);
    let _ = std::fs::remove_file(&helper);
    b.assert_ok("page-edge strings (under flex)");
    assert_eq!(String::from_utf8_lossy(b.stdout()), "edge opens: 1 1 1\n");
    assert_eq!(
        (b.stats.served("open"), b.stats.passed("open")),
        (3, 0),
        "{}",
        b.stats.dump()
    );
}
