//! Close-to-open coherence between two clients of one file (the NFS step of
//! `scripts/dax-vm`): DIR1 and DIR2 are one exported directory mounted twice, and each
//! is in turn the store's mount, the other one the other client's (plain std::fs). The
//! engine keeps a file's state across close within a process (its inode cache), so a
//! reopen through the store must see exactly what the other client wrote in between:
//! its bytes and its size, also when the file shrank; and the other client must read
//! what the store wrote once the store has closed the file.

use crate::store::{self, Handle, Store};
use std::io;
use std::path::Path;

const ROUNDS: u64 = 4;

/// Round `r`'s content for `who`: sizes that are not page multiples, growing and shrinking.
fn content(r: u64, who: u8) -> Vec<u8> {
    let len = match (r + u64::from(who)) % 4 {
        0 => 70_001,
        1 => 3_333,
        2 => 200_000 + 17 * r as usize,
        _ => 1,
    };
    (0..len)
        .map(|i| (i as u64 * 31 + r * 7 + u64::from(who)) as u8)
        .collect()
}

/// What differs between `got` and `want`, for the report.
fn diff(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    Some(match at {
        Some(i) => format!(
            "{} bytes, want {}; first difference at {i}",
            got.len(),
            want.len()
        ),
        None => format!("{} bytes, want {} (same prefix)", got.len(), want.len()),
    })
}

pub fn run(d1: &Path, d2: &Path) -> io::Result<bool> {
    let mut problems = Vec::new();
    let mut mapped = false;
    // Each mount in turn is the store's, the other one the other client's.
    for (mine, other) in [(d1, d2), (d2, d1)] {
        one_way(mine, other, &mut problems, &mut mapped)?;
    }
    let tag = format!("coherence {} {}", d1.display(), d2.display());
    let how = if mapped {
        "mapped"
    } else {
        "left to the kernel"
    };
    if problems.is_empty() {
        println!(
            "FX PASS {tag}: {ROUNDS} rounds each way through {}, {how}; fallbacks {}",
            store::BACKEND,
            store::fallbacks()
        );
        Ok(true)
    } else {
        for p in problems.iter().take(20) {
            println!("FX FAIL {tag}: {p}");
        }
        Ok(false)
    }
}

fn one_way(
    mine: &Path,
    other: &Path,
    problems: &mut Vec<String>,
    mapped: &mut bool,
) -> io::Result<()> {
    // A name per direction, created by the other client before the store looks it up:
    // a name removed through a mount may stay negative in its dentry cache for a while
    // (attribute caching, which close-to-open does not cover).
    let name = format!("coherence-{}", mine.display()).replace('/', "_");
    let (p1, p2) = (mine.join(&name), other.join(&name));
    let _ = std::fs::remove_file(&p2);
    std::fs::write(&p2, b"")?;
    let tag = |r: u64| format!("{} round {r}", mine.display());
    for r in 0..ROUNDS {
        // The store writes through its mount and reads it back; the other client reads it.
        let a = content(r, 0);
        {
            let mut h = Handle::open(&p1)?;
            h.set_len(0)?;
            h.write_all_at(&a, 0)?;
            *mapped |= h.mapped();
            if let Some(d) = diff(&h.read_all()?, &a) {
                problems.push(format!("{}: own read back: {d}", tag(r)));
            }
        }
        if let Some(d) = diff(&std::fs::read(&p2)?, &a) {
            problems.push(format!(
                "{}: the other client after the store's close: {d}",
                tag(r)
            ));
        }
        // The other client rewrites it (another size); the store reopens it, read-only
        // and read-write, and must see exactly that.
        let b = content(r, 1);
        std::fs::write(&p2, &b)?;
        for rw in [false, true] {
            let mut h = if rw {
                Handle::open(&p1)?
            } else {
                Handle::open_read(&p1)?
            };
            *mapped |= h.mapped();
            let how = if rw { "read-write" } else { "read-only" };
            let len = h.len()?;
            if len != b.len() as u64 {
                problems.push(format!(
                    "{}: {how} reopen sees size {len}, the other client wrote {}",
                    tag(r),
                    b.len()
                ));
            }
            if let Some(d) = diff(&h.read_all()?, &b) {
                problems.push(format!(
                    "{}: {how} reopen after the other client's write: {d}",
                    tag(r)
                ));
            }
        }
    }
    std::fs::remove_file(&p2)
}
