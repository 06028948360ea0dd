//! Smoke test of `flexio bench`: a tiny configuration runs end to end, the JSON holds
//! every sample of both sides, and flex's own stats show that it served the IO.
//! No timing is checked: only completeness and who served the calls.

#[path = "common/run.rs"]
mod run;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The cells run, with the calls flex must have served in each.
const CELLS: &[(&str, &[&str])] = &[
    ("pread-4k-t1", &["pread", "pread64"]),
    ("pwrite-4k-t1", &["pwrite", "pwrite64"]),
    ("append-4k-t1", &["write"]),
    ("smallfiles-4k-t1", &["open"]),
    // 4 processes appending to one file; the worker fails the sample if a record is lost.
    ("mp-append-4k", &["write"]),
];
/// The multi-process SQLite cells, run when sqlite3 is installed (the sample fails if the
/// row count is short). Its calls: the database's and journal's.
const SQLITE_CELLS: &[(&str, &[&str])] = &[
    ("mp-sqlite-4w", &["pread", "pread64", "pwrite", "pwrite64"]),
    (
        "mp-sqlite-4w-atomic",
        &["pread", "pread64", "pwrite", "pwrite64"],
    ),
];
/// Cells whose files flex manages but whose writes, by design, stay the kernel's on page
/// granularity (/dev/shm): appends, through descriptors that stay lazy (see
/// ARCHITECTURE.md, "The data path of a write").
const KERNEL_BY_DESIGN: &[&str] = &["append-4k-t1", "mp-append-4k"];
/// Cells whose files are opened, read once and closed: flex opens them lazily and the
/// kernel serves their reads (no fstat, inode or mapping for a short-lived file).
const LAZY_BY_DESIGN: &[&str] = &["smallfiles-4k-t1"];

fn sqlite3_installed() -> bool {
    Command::new("sqlite3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
const REPS: u64 = 2;

#[test]
fn bench_runs_both_sides_and_flex_serves_the_io() {
    let exe = run::flexio();
    let lib = run::libflex();
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir for results");
    let json = out.path().join("bench.json");
    let svg = out.path().join("bench.svg");
    let mut cells_run: Vec<(&str, &[&str])> = CELLS.to_vec();
    if sqlite3_installed() {
        cells_run.extend_from_slice(SQLITE_CELLS);
    }
    let filter: Vec<&str> = cells_run.iter().map(|c| c.0).collect();
    let res = Command::new(&exe)
        .arg("bench")
        .arg("--quick")
        .arg("--dir")
        .arg(base.path())
        .args(["--reps", &REPS.to_string(), "--seconds", "0.02"])
        .args(["--file-size", "8M", "--sizes", "4k", "--threads", "1"])
        .args(["--small-files", "64", "--fsync-every", "0"])
        .arg("--filter")
        .arg(filter.join(","))
        .arg("--libflex")
        .arg(&lib)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run flexio bench");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "flexio bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let doc: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("valid JSON");
    assert!(svg.exists(), "SVG written");
    assert!(doc["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(doc["config"]["reps"].as_u64(), Some(REPS));

    let cells = doc["cells"].as_array().expect("cells");
    let names: Vec<&str> = cells.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, filter, "exactly the filtered cells, in order");

    let samples = doc["samples"].as_array().expect("samples");
    assert_eq!(
        samples.len() as u64,
        cells_run.len() as u64 * REPS * 2,
        "one sample per cell, side and rep"
    );
    for (cell, calls) in &cells_run {
        for side in ["kernel", "flex"] {
            let mut reps: Vec<u64> = samples
                .iter()
                .filter(|s| s["cell"] == *cell && s["side"] == side)
                .map(|s| {
                    assert_eq!(s["ok"], true, "{cell} {side}: {}", s["error"]);
                    assert!(s["ops"].as_u64().unwrap_or(0) > 0, "{cell} {side}: no ops");
                    assert!(
                        s["seconds"].as_f64().unwrap_or(0.0) > 0.0,
                        "{cell} {side}: no time"
                    );
                    assert!(
                        s["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
                        "{cell} {side}"
                    );
                    if side == "flex" {
                        let st = &s["flex_stats"];
                        assert!(
                            st.is_object(),
                            "{cell}: flex wrote no FLEX_STATS (flex did not serve)\n{stdout}"
                        );
                        let served: u64 =
                            calls.iter().filter_map(|c| st["served"][c].as_u64()).sum();
                        let passed: u64 = calls
                            .iter()
                            .filter_map(|c| st["passthrough"][c].as_u64())
                            .sum();
                        if LAZY_BY_DESIGN.contains(cell) {
                            let lazy = st["fallbacks"].as_object().and_then(|f| {
                                f.iter()
                                    .find(|(k, _)| k.starts_with("lazy:"))
                                    .and_then(|(_, v)| v.as_u64())
                            });
                            assert!(
                                served >= s["ops"].as_u64().unwrap()
                                    && lazy == Some(served)
                                    && st["served"]["read"].as_u64().unwrap_or(0) == 0,
                                "{cell}: not every open lazy and read by the kernel: {st}"
                            );
                        } else if KERNEL_BY_DESIGN.contains(cell) {
                            // The file is managed (appends: the kernel extends files off
                            // DAX, so the writers never map it) and its descriptors stay
                            // lazy: every write is at or past the end, the kernel's from
                            // the start; no write reaches flex (mp-append's parent then
                            // reads the file through flex to check the records).
                            let lazy = st["fallbacks"].as_object().and_then(|f| {
                                f.iter()
                                    .find(|(k, _)| k.starts_with("lazy:"))
                                    .and_then(|(_, v)| v.as_u64())
                            });
                            let opens = st["served"]["open"].as_u64().unwrap_or(0);
                            assert!(
                                opens >= 1 && lazy >= Some(1) && served + passed == 0,
                                "{cell}: flex did not leave the appends lazy: {st}"
                            );
                        } else {
                            // Every timed op (and the warm-up) went through flex.
                            assert!(
                                served >= s["ops"].as_u64().unwrap(),
                                "{cell}: flex served {served} of {} {calls:?} calls: {st}",
                                s["ops"]
                            );
                        }
                    } else {
                        assert!(
                            s["flex_stats"].is_null(),
                            "{cell}: kernel side has no flex stats"
                        );
                    }
                    s["rep"].as_u64().expect("rep")
                })
                .collect();
            reps.sort();
            assert_eq!(
                reps,
                (0..REPS).collect::<Vec<_>>(),
                "{cell} {side}: every rep once"
            );
        }
        let c = cells.iter().find(|c| c["name"] == *cell).unwrap();
        if !KERNEL_BY_DESIGN.contains(cell) {
            assert_eq!(c["flex_status"], "served", "{cell}: {c}");
        }
        assert!(
            c["ratio"].as_f64().is_some_and(|r| r > 0.0),
            "{cell}: ratio"
        );
    }
    // The bench removes its scratch files.
    assert_eq!(
        std::fs::read_dir(base.path()).unwrap().count(),
        0,
        "scratch files left behind"
    );
}
