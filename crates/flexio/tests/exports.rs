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
