//! The multi-process cells: several processes on one file at once (mp-append through
//! `flexio bench-worker`, mp-sqlite through sqlite3 shells).

use std::path::Path;

use super::{
    cell, served, which, worker_job, CellDef, CellKind, ClientSizes, Job, JobKind, Matrix, Unit,
};

/// The processes of the multi-process cells.
const MP_PROCS: usize = 4;
/// Inserts per transaction of the mp-sqlite cells.
const MP_SQLITE_ROWS: usize = 5;

/// The multi-process cells: `MP_PROCS` processes on one file at once. They run with the
/// built-in cells (mp-append always; mp-sqlite when sqlite3 is installed).
pub(crate) fn mp_jobs(
    m: &Matrix,
    work: &Path,
    sz: &ClientSizes,
) -> (Vec<Job>, Vec<(String, String)>) {
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    let p = MP_PROCS;
    let name = "mp-append-4k".to_string();
    let args = vec![
        "mp-append".into(),
        "--file".into(),
        m.append_prefix
            .with_file_name("mp-append.log")
            .display()
            .to_string(),
        "--bs".into(),
        "4096".into(),
        "--procs".into(),
        p.to_string(),
        "--size".into(),
        m.append_cap.to_string(),
        "--seconds".into(),
        m.seconds.to_string(),
    ];
    let what = format!(
        "{p} processes at once, each write(2)-ing 4 KiB records to its own O_WRONLY|O_APPEND \
         descriptor of one shared file; appends/s of all; file size and records checked"
    );
    jobs.push(worker_job(
        name.clone(),
        cell(
            &name,
            CellKind::Builtin,
            Unit::NsPerOp,
            served(&["write"]),
            &what,
        ),
        false,
        args,
    ));
    if which("sqlite3").is_some() {
        for atomic in [false, true] {
            let name = if atomic {
                format!("mp-sqlite-{p}w-atomic")
            } else {
                format!("mp-sqlite-{p}w")
            };
            let what = format!(
                "{p} sqlite3 processes at once on one rollback-journal database, each {} \
                 BEGIN IMMEDIATE transactions of {MP_SQLITE_ROWS} inserts (busy timeout); \
                 transactions/s of all; row count checked{}",
                sz.mp_sqlite_txns,
                if atomic {
                    "; flex side FLEX_MODE=atomic (kernel: plain)"
                } else {
                    ""
                }
            );
            jobs.push(Job {
                name: name.clone(),
                cells: vec![CellDef {
                    name: name.clone(),
                    kind: CellKind::Client,
                    unit: Unit::OpsPerSec,
                    expect: served(&["pwrite", "pread", "write", "read"]),
                    what,
                }],
                kernel_only: false,
                kind: JobKind::SqliteMp {
                    procs: p,
                    txns: sz.mp_sqlite_txns,
                    rows: MP_SQLITE_ROWS,
                    db: work.join(format!("{name}.db")),
                },
                flex_env: if atomic {
                    vec![("FLEX_MODE".into(), "atomic".into())]
                } else {
                    Vec::new()
                },
            });
        }
    } else {
        skipped.push(("mp-sqlite".into(), "sqlite3 not found on PATH".into()));
    }
    (jobs, skipped)
}
