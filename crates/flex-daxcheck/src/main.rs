//! Guest-side checks for the real-DAX lane (`scripts/dax-vm`).
//!
//! ```text
//! flex-daxcheck granularity DIR             FX GRANULARITY DIR cache-line|page (+ kernel probes)
//! flex-daxcheck writer DIR MODE             writes until killed, FX PROGRESS <seq> <synced> . per write
//! flex-daxcheck verify DIR MODE SEQ SYNCED  after the power cut: FX PASS ... / FX FAIL ...
//! flex-daxcheck coherence DIR1 DIR2         two mounts of one NFS export: close-to-open
//! ```
//! MODE: `dax` (cache-line, no sync ever), `page` (sync_data every few writes), `create`
//! (many new files, each written once, no sync ever), and failure-atomic files (sync_data =
//! commit every few writes; after the cut the file must be exactly a committed state):
//! `atomic` (ext4-DAX, policy auto), `uatomic` (xfs-DAX, undo logging forced), `patomic`
//! (ext4 on a virtio disk: page granularity, the log synced with fdatasync). Every line
//! for the host starts "FX ".

mod coherence;
mod model;
mod probe;
mod store;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use store::{Handle, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["granularity", dir] => granularity(Path::new(dir)),
        ["writer", dir, mode] => writer(Path::new(dir), mode),
        ["coherence", d1, d2] => coherence::run(Path::new(d1), Path::new(d2)),
        ["verify", dir, mode, seq, synced] => match (seq.parse(), synced.parse()) {
            (Ok(seq), Ok(synced)) => verify(Path::new(dir), mode, seq, synced),
            _ => Err(io::Error::other("SEQ and SYNCED must be numbers")),
        },
        _ => {
            eprintln!(
                "usage: flex-daxcheck granularity DIR | writer DIR MODE | verify DIR MODE SEQ SYNCED \
                 | coherence DIR1 DIR2"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("FX FAIL {}: {e}", a.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))
}

/// The granularity the engine chose for a new file in `dir`, and what the kernel offers.
fn granularity(dir: &Path) -> io::Result<bool> {
    let path = dir.join("granularity.probe");
    let _ = std::fs::remove_file(&path);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut h = ctx(Handle::create(&path), || {
        format!("create {}", path.display())
    })?;
    h.write_all_at(&data, 0)?;
    h.sync_data()?;
    let g = h.granularity();
    let len = h.len()?;
    drop(h);
    let back = std::fs::read(&path)?;
    let ok = len == data.len() as u64 && back == data;
    println!("FX BACKEND {}", store::BACKEND);
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let ms = match probe::map_sync(&raw) {
        Ok(()) => "ok".to_string(),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".to_string(),
        Err(e) => format!("error:{e}"),
    };
    println!("FX MAPSYNC {} {ms}", dir.display());
    println!(
        "FX STATX-DAX {} {}",
        dir.display(),
        u8::from(probe::statx_dax(&path)?)
    );
    if !ok {
        println!(
            "FX FAIL granularity {}: read back {} bytes (len {len}), wrote {}",
            dir.display(),
            back.len(),
            data.len()
        );
    }
    println!("FX GRANULARITY {} {g}", dir.display());
    std::fs::remove_file(&path)?;
    Ok(ok)
}

fn expect_granularity(mode: &str) -> &'static str {
    if mode == "page" || mode == "patomic" {
        "page"
    } else {
        "cache-line"
    }
}

fn seed(dir: &Path) -> u64 {
    model::seed_of(&dir.file_name().unwrap_or_default().to_string_lossy())
}

fn progress(seq: u64, synced: u64) {
    // One line per returned write; the host may cut the power right after reading it.
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "FX PROGRESS {seq} {synced} .");
    let _ = out.flush();
    // Wait until the UART has sent the line: the tty layer would otherwise buffer many
    // lines, the host would see progress seconds late, and by then the kernel's periodic
    // journal commit would have made even an fsync-less page-cache write durable: the
    // cut must come right after the reported write.
    // SAFETY: tcdrain on fd 1 only blocks; on a non-tty it fails with ENOTTY, ignored.
    unsafe { libc::tcdrain(1) };
}

fn writer(dir: &Path, mode: &str) -> io::Result<bool> {
    let seed = seed(dir);
    let want = expect_granularity(mode);
    let mut buf = Vec::new();
    if mode == "create" {
        for k in 1..=model::MAX_OPS {
            let path = dir.join(format!("f{k}"));
            buf.resize(model::create_len(seed, k) as usize, 0);
            model::fill(seed, k, 0, &mut buf);
            let mut h = ctx(Handle::create(&path), || {
                format!("create {}", path.display())
            })?;
            if k == 1 {
                println!(
                    "FX WRITER {} granularity {} via {}",
                    dir.display(),
                    h.granularity(),
                    store::BACKEND
                );
                if h.granularity() != want {
                    println!("FX FAIL writer {mode}: granularity is not {want}");
                    return Ok(false);
                }
            }
            h.write_all_at(&buf, 0)?;
            drop(h);
            progress(k, 0);
        }
        return Ok(true);
    }
    let atomic = is_atomic(mode);
    if !matches!(mode, "dax" | "xdax" | "page") && !atomic {
        return Err(io::Error::other(format!("unknown mode {mode}")));
    }
    if mode == "uatomic" {
        // Read by the engine at its first use, below.
        std::env::set_var("FLEX_ATOMIC_POLICY", "undo");
    }
    let path = dir.join("data");
    let mut h = ctx(
        if atomic {
            Handle::create_atomic(&path)
        } else {
            Handle::create(&path)
        },
        || format!("create {}", path.display()),
    )?;
    println!(
        "FX WRITER {} granularity {} via {}",
        dir.display(),
        h.granularity(),
        store::BACKEND
    );
    if h.granularity() != want {
        println!("FX FAIL writer {mode}: granularity is not {want}");
        return Ok(false);
    }
    let mut size = 0;
    let mut synced = 0;
    for k in 1..=model::MAX_OPS {
        let o = model::op(seed, k, size);
        buf.resize(o.len as usize, 0);
        model::fill(seed, k, o.off, &mut buf);
        h.write_all_at(&buf, o.off)?;
        size = size.max(o.end());
        if (mode == "page" || atomic) && k % model::SYNC_EVERY == 0 {
            h.sync_data()?;
            synced = k;
        }
        progress(k, synced);
    }
    Ok(true)
}

fn is_atomic(mode: &str) -> bool {
    matches!(mode, "atomic" | "uatomic" | "patomic")
}

fn verify(dir: &Path, mode: &str, seq: u64, synced: u64) -> io::Result<bool> {
    let seed = seed(dir);
    if mode == "create" {
        return verify_create(dir, seed, seq);
    }
    if is_atomic(mode) {
        return verify_atomic(dir, mode, seed, seq, synced);
    }
    let (base, zero_ok) = if mode == "page" {
        (synced, true)
    } else {
        (seq, false)
    };
    let base = base.min(model::MAX_OPS);
    let path = dir.join("data");
    let tag = format!("verify {mode} {} base={base}", dir.display());
    let raw_len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound && base == 0 => {
            println!("FX PASS {tag}: no file and nothing was promised");
            return Ok(true);
        }
        Err(e) => {
            println!("FX FAIL {tag}: {}: {e}", path.display());
            return Ok(false);
        }
    };
    let (data, flex_len, g) = {
        let mut h = ctx(Handle::open(&path), || format!("open {}", path.display()))?;
        let g = h.granularity();
        (h.read_all()?, h.len()?, g)
    };
    ctx(store::recover(&path), || {
        format!("recover {}", path.display())
    })?;
    let fs_data = std::fs::read(&path)?;
    let mut problems = Vec::new();
    if g != expect_granularity(mode) {
        problems.push(format!("reopened with granularity {g}"));
    }
    if fs_data.len() as u64 != flex_len || data.len() as u64 != flex_len {
        problems.push(format!(
            "sizes disagree: flex len {flex_len}, flex read {}, file after recover {}",
            data.len(),
            fs_data.len()
        ));
    }
    if fs_data != data {
        problems.push("contents read through flex and through the kernel differ".into());
    }
    let rep = model::check(seed, base, &fs_data, zero_ok);
    problems.extend(rep.problems);
    let ops = match (rep.size_ops.first(), rep.size_ops.last()) {
        (Some(a), Some(b)) if a == b => format!("op {a}"),
        (Some(a), Some(b)) => format!("ops {a}..{b}"),
        _ => "no op".into(),
    };
    let detail = format!(
        "size {} (raw size before recovery {raw_len}) = size after {ops}; {} bytes from writes after {base}",
        fs_data.len(),
        rep.newer_bytes
    );
    if problems.is_empty() {
        println!("FX PASS {tag}: {detail}");
        Ok(true)
    } else {
        for p in &problems {
            println!("FX FAIL {tag}: {p}");
        }
        println!("FX INFO {tag}: {detail}");
        Ok(false)
    }
}

/// A failure-atomic file after the cut: recovered from its log, it must be exactly the
/// model's state at the last reported commit, or at the next one (the commit in flight).
fn verify_atomic(dir: &Path, mode: &str, seed: u64, seq: u64, synced: u64) -> io::Result<bool> {
    let path = dir.join("data");
    let tag = format!("verify {mode} {} seq={seq} synced={synced}", dir.display());
    let log = dir.join(".data.flexlog");
    let had_log = log.exists();
    let raw_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    ctx(store::recover(&path), || {
        format!("recover {}", path.display())
    })?;
    let got = std::fs::read(&path)?;
    let next = (synced + model::SYNC_EVERY).min(model::MAX_OPS);
    let mut problems = Vec::new();
    let which = if got == model::state(seed, synced) {
        format!("the state at commit {synced} (the last reported)")
    } else if next <= seq + model::SYNC_EVERY && got == model::state(seed, next) {
        format!("the state at commit {next} (in flight at the cut)")
    } else {
        let sizes = model::sizes(seed, next);
        problems.push(format!(
            "{} bytes, not a committed state (size at commit {synced}: {}, at {next}: {})",
            got.len(),
            sizes[synced as usize],
            sizes[next as usize]
        ));
        String::new()
    };
    if store::BACKEND.starts_with("flexio") && log.exists() {
        problems.push("log left after recovery".into());
    }
    if problems.is_empty() {
        println!(
            "FX PASS {tag}: {} bytes = {which}; log {} before recovery; raw size {raw_len}",
            got.len(),
            if had_log { "present" } else { "absent" }
        );
        Ok(true)
    } else {
        for p in &problems {
            println!("FX FAIL {tag}: {p}");
        }
        Ok(false)
    }
}

fn verify_create(dir: &Path, seed: u64, seq: u64) -> io::Result<bool> {
    let tag = format!("verify create {} seq={seq}", dir.display());
    let mut problems = Vec::new();
    let mut later = 0;
    let mut expect = Vec::new();
    for k in 1..=model::MAX_OPS {
        let path: PathBuf = dir.join(format!("f{k}"));
        let exists = path.exists();
        if !exists {
            if k <= seq {
                problems.push(format!("f{k} is missing (its write returned)"));
            }
            continue;
        }
        let flex_len = {
            let h = ctx(Handle::open(&path), || format!("open {}", path.display()))?;
            h.len()?
        };
        ctx(store::recover(&path), || {
            format!("recover {}", path.display())
        })?;
        let got = std::fs::read(&path)?;
        let want_len = model::create_len(seed, k) as usize;
        expect.resize(want_len, 0);
        model::fill(seed, k, 0, &mut expect);
        if got.len() as u64 != flex_len {
            problems.push(format!(
                "f{k}: flex len {flex_len}, file after recover {}",
                got.len()
            ));
        }
        if k <= seq {
            if got != expect {
                problems.push(format!(
                    "f{k}: {} bytes, expected {want_len} bytes of its data",
                    got.len()
                ));
            }
        } else {
            // Created or written when the power went: nothing promised but no garbage.
            later += 1;
            if got.len() > want_len || got[..] != expect[..got.len()] {
                problems.push(format!(
                    "f{k} (unreported): {} bytes, not a prefix of its data",
                    got.len()
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("FX PASS {tag}: f1..f{seq} present with exact size and data; {later} later file(s) consistent");
        Ok(true)
    } else {
        for p in problems.iter().take(20) {
            println!("FX FAIL {tag}: {p}");
        }
        Ok(false)
    }
}
