//! The matrix: jobs (one child process per sample) and the cells (table rows) they measure.
//!
//! The built-in cells (`builtin`) and the multi-process ones (`multiprocess`) run
//! `flexio bench-worker` or several programs at once; the real clients have a module each
//! (`fio`, `db_bench`, `sqlite`, `redis`) with their cells and how their output is read;
//! `sample` runs one sample of any job on one side.

mod builtin;
mod db_bench;
mod fio;
mod multiprocess;
mod redis;
mod sample;
mod sqlite;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub(crate) use builtin::builtin_jobs;
pub(crate) use multiprocess::mp_jobs;
pub(crate) use sample::{run_sample, Launch};

/// Which side a sample ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Side {
    Kernel,
    Flex,
}

impl Side {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Kernel => "kernel",
            Side::Flex => "flex",
        }
    }
}

/// What kind of row a cell is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CellKind {
    /// A built-in micro-benchmark.
    Builtin,
    /// A physical bound (memcpy from a mapping): measured on the kernel side only.
    Bound,
    /// A real client program.
    Client,
}

/// The unit the table shows a cell in (the ratio is always of throughputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    NsPerOp,
    OpsPerSec,
}

/// Which calls flex must have served (any of the aliases) for the cell to count as served.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Expect {
    /// One of these call names must show up in the stats' `served` map.
    Served(Vec<&'static str>),
    /// Calls on pipes/sockets: flex must be loaded (stats present) and pass them through.
    Passthrough,
    /// Nothing to check (bounds, fio's mmap engine).
    Nothing,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct CellDef {
    pub name: String,
    pub kind: CellKind,
    pub unit: Unit,
    pub expect: Expect,
    /// What one op is, for the reader.
    pub what: String,
}

#[derive(Clone, Debug)]
pub(crate) enum JobKind {
    /// `flexio bench-worker <args>`.
    Worker(Vec<String>),
    /// fio with these arguments (the output format is added).
    Fio(Vec<String>),
    /// db_bench with these arguments; `db` is removed before and after each sample.
    DbBench {
        exe: PathBuf,
        args: Vec<String>,
        db: PathBuf,
    },
    /// The sqlite3 shell on `db` with a generated script.
    Sqlite {
        wal: bool,
        txns: usize,
        rows: usize,
        selects: usize,
        db: PathBuf,
    },
    /// redis-server + redis-benchmark on loopback.
    Redis { requests: u64, dir: PathBuf },
    /// `procs` sqlite3 shells at once on one rollback-journal database `db`, each running
    /// `txns` `BEGIN IMMEDIATE` transactions of `rows` inserts (busy timeout: they wait
    /// for each other); the kernel's sqlite3 then checks the row count.
    SqliteMp {
        procs: usize,
        txns: usize,
        rows: usize,
        db: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub name: String,
    pub cells: Vec<CellDef>,
    pub kernel_only: bool,
    pub kind: JobKind,
    /// Extra environment of the flex side only (e.g. `FLEX_MODE=atomic`).
    pub flex_env: Vec<(String, String)>,
}

/// One measurement of one cell in one sample.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Metric {
    pub cell: String,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub ns_per_op: f64,
    pub bytes: u64,
}

impl Metric {
    fn from_rate(cell: &str, ops: u64, seconds: f64, bytes: u64) -> Metric {
        let ops_per_sec = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        Metric {
            cell: cell.to_string(),
            ops,
            seconds,
            ops_per_sec,
            ns_per_op: if ops_per_sec > 0.0 {
                1e9 / ops_per_sec
            } else {
                f64::INFINITY
            },
            bytes,
        }
    }
}

/// Call-name aliases the lead's stats may use.
fn aliases(call: &str) -> Vec<&'static str> {
    match call {
        "pread" => vec!["pread", "pread64"],
        "pwrite" => vec!["pwrite", "pwrite64"],
        "preadv" => vec!["preadv", "preadv64"],
        "pwritev" => vec!["pwritev", "pwritev64"],
        // flex may count the v2 calls under their v1 names.
        "preadv2" => vec!["preadv2", "preadv64v2", "preadv", "preadv64"],
        "pwritev2" => vec!["pwritev2", "pwritev64v2", "pwritev", "pwritev64"],
        "read" => vec!["read"],
        "write" => vec!["write"],
        "open" => vec!["open", "open64", "openat", "openat64"],
        "fsync" => vec!["fsync", "fdatasync"],
        _ => vec![],
    }
}

fn served(calls: &[&str]) -> Expect {
    Expect::Served(calls.iter().flat_map(|c| aliases(c)).collect())
}

fn size_label(bs: usize) -> String {
    if bs >= 1 << 20 && bs.trailing_zeros() >= 20 {
        format!("{}m", bs >> 20)
    } else if bs >= 1024 && bs.trailing_zeros() >= 10 {
        format!("{}k", bs >> 10)
    } else {
        bs.to_string()
    }
}

/// The parameters of the built-in matrix.
pub(crate) struct Matrix {
    pub data_file: PathBuf,
    pub file_size: u64,
    pub small_dir: PathBuf,
    pub small_count: usize,
    pub append_prefix: PathBuf,
    /// Most bytes one append sample may write (all threads): a memory safety valve.
    pub append_cap: u64,
    pub sizes: Vec<usize>,
    pub threads: Vec<usize>,
    pub fsync_every: u64,
    pub seconds: f64,
}

fn worker_job(name: String, cells: Vec<CellDef>, kernel_only: bool, args: Vec<String>) -> Job {
    Job {
        name,
        cells,
        kernel_only,
        kind: JobKind::Worker(args),
        flex_env: Vec::new(),
    }
}

fn cell(name: &str, kind: CellKind, unit: Unit, expect: Expect, what: &str) -> Vec<CellDef> {
    vec![CellDef {
        name: name.to_string(),
        kind,
        unit,
        expect,
        what: what.to_string(),
    }]
}

/// Sizes of the client workloads.
pub(crate) struct ClientSizes {
    pub fio_ms: u64,
    pub db_num: u64,
    pub sqlite_txns: usize,
    pub sqlite_selects: usize,
    pub redis_requests: u64,
    /// Run fio's job as a thread of the main process (`--thread`) instead of forking.
    pub fio_thread: bool,
    /// Transactions of each writer of the mp-sqlite cells.
    pub mp_sqlite_txns: usize,
}

/// Finds an executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// A real client's cell: operations per second.
fn client(name: &str, expect: Expect, what: &str) -> CellDef {
    CellDef {
        name: name.to_string(),
        kind: CellKind::Client,
        unit: Unit::OpsPerSec,
        expect,
        what: what.to_string(),
    }
}

/// The real-client jobs, and the clients that are missing (name, reason).
pub(crate) fn client_jobs(
    m: &Matrix,
    work: &Path,
    sz: &ClientSizes,
) -> (Vec<Job>, Vec<(String, String)>) {
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    fio::jobs(m, sz, &mut jobs, &mut skipped);
    db_bench::jobs(work, sz, &mut jobs, &mut skipped);
    sqlite::jobs(work, sz, &mut jobs, &mut skipped);
    redis::jobs(work, sz, &mut jobs, &mut skipped);
    (jobs, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cells(names: &[&str]) -> Vec<CellDef> {
        names
            .iter()
            .map(|n| CellDef {
                name: n.to_string(),
                kind: CellKind::Client,
                unit: Unit::OpsPerSec,
                expect: Expect::Nothing,
                what: String::new(),
            })
            .collect()
    }

    #[test]
    fn matrix_names_are_unique() {
        let m = Matrix {
            data_file: "/x/data".into(),
            file_size: 1 << 20,
            small_dir: "/x/small".into(),
            small_count: 10,
            append_prefix: "/x/log".into(),
            append_cap: 1 << 30,
            sizes: vec![512, 4096, 65536],
            threads: vec![1, 2],
            fsync_every: 16,
            seconds: 0.1,
        };
        let mut jobs = builtin_jobs(&m);
        let sz = ClientSizes {
            fio_ms: 1,
            db_num: 1,
            sqlite_txns: 1,
            sqlite_selects: 1,
            redis_requests: 1,
            fio_thread: false,
            mp_sqlite_txns: 1,
        };
        jobs.extend(mp_jobs(&m, Path::new("/x"), &sz).0);
        let mut names: Vec<_> = jobs
            .iter()
            .flat_map(|j| j.cells.iter().map(|c| c.name.clone()))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(n, names.len());
        assert!(names.contains(&"pread-4k-t1".to_string()));
        assert!(names.contains(&"memcpy-512-t2".to_string()));
        assert!(names.contains(&"append-4k-fsync16-t1".to_string()));
        assert!(names.contains(&"passthrough-pipe".to_string()));
        assert!(names.contains(&"mp-append-4k".to_string()));
        assert!(
            jobs.iter()
                .find(|j| j.name == "memcpy-64k-t1")
                .unwrap()
                .kernel_only
        );
    }
}
