//! The matrix: jobs (one child process per sample) and the cells (table rows) they measure.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::worker::WorkerResult;

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

/// What the runner needs to launch a sample.
pub(crate) struct Launch<'a> {
    pub flexio_exe: &'a Path,
    pub libflex: &'a Path,
    /// The directory flex manages (FLEX_PATHS) and where every file lives.
    pub work: &'a Path,
    /// Scratch directory outside `work` (stats files, scripts).
    pub scratch: &'a Path,
    /// Wrap flex-side clients in `flexio run` (when the CLI has it), else set LD_PRELOAD.
    pub use_flexio_run: bool,
    pub seconds: f64,
}

/// Call-name aliases the lead's stats may use.
pub(crate) fn aliases(call: &str) -> Vec<&'static str> {
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

pub(crate) fn size_label(bs: usize) -> String {
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

/// The built-in jobs, in the order they run.
pub(crate) fn builtin_jobs(m: &Matrix) -> Vec<Job> {
    let mut jobs = Vec::new();
    let secs = format!("{}", m.seconds);
    let common = |wl: &str, file: &Path, bs: usize, threads: usize| -> Vec<String> {
        vec![
            wl.to_string(),
            "--file".into(),
            file.display().to_string(),
            "--bs".into(),
            bs.to_string(),
            "--threads".into(),
            threads.to_string(),
            "--seconds".into(),
            secs.clone(),
        ]
    };
    let size = m.file_size.to_string();
    for &t in &m.threads {
        for &bs in &m.sizes {
            let l = size_label(bs);
            for (wl, kind, expect, what) in [
                (
                    "pread",
                    CellKind::Builtin,
                    served(&["pread"]),
                    "random pread",
                ),
                (
                    "pwrite",
                    CellKind::Builtin,
                    served(&["pwrite"]),
                    "random pwrite",
                ),
                (
                    "memcpy",
                    CellKind::Bound,
                    Expect::Nothing,
                    "memcpy from a mapping (bound)",
                ),
            ] {
                let name = format!("{wl}-{l}-t{t}");
                let mut args = common(wl, &m.data_file, bs, t);
                args.extend(["--size".into(), size.clone()]);
                let what = format!("{what} of {bs} B, {t} thread(s)");
                jobs.push(worker_job(
                    name.clone(),
                    cell(&name, kind, Unit::NsPerOp, expect, &what),
                    kind == CellKind::Bound,
                    args,
                ));
            }
        }
        let mut fsyncs = vec![0];
        if m.fsync_every > 0 {
            fsyncs.push(m.fsync_every);
        }
        for fsync in fsyncs {
            let name = if fsync == 0 {
                format!("append-4k-t{t}")
            } else {
                format!("append-4k-fsync{fsync}-t{t}")
            };
            let mut args = common("append", &m.append_prefix, 4096, t);
            args.extend([
                "--size".into(),
                m.append_cap.to_string(),
                "--fsync-every".into(),
                fsync.to_string(),
            ]);
            let what = if fsync == 0 {
                format!("sequential 4 KiB write, {t} thread(s) each on its own file")
            } else {
                format!("sequential 4 KiB write + fsync every {fsync}, {t} thread(s)")
            };
            let expect = served(&["write"]);
            jobs.push(worker_job(
                name.clone(),
                cell(&name, CellKind::Builtin, Unit::NsPerOp, expect, &what),
                false,
                args,
            ));
        }
        let name = format!("smallfiles-4k-t{t}");
        let mut args = common("smallfiles", &m.small_dir, 4096, t);
        args.extend(["--count".into(), m.small_count.to_string()]);
        let what = format!(
            "open + read 4 KiB + close over {} files, {t} thread(s)",
            m.small_count
        );
        jobs.push(worker_job(
            name.clone(),
            cell(
                &name,
                CellKind::Builtin,
                Unit::NsPerOp,
                served(&["read"]),
                &what,
            ),
            false,
            args,
        ));
    }
    if m.fsync_every > 0 {
        // 4 KiB random pwrite + fsync every N, one thread: flex against the kernel, and
        // flex's failure-atomic mode (FLEX_MODE=atomic; policy auto, and forced redo and
        // undo) against the kernel's plain calls. Then a read-mostly mix (9 preads per
        // pwrite), where the auto policy picks undo logging.
        let f = m.fsync_every;
        let variants: [(&str, Option<&str>, u64, &str); 7] = [
            (
                "pwrite-4k-fsync",
                None,
                0,
                "random 4 KiB pwrite + fsync every {f}, 1 thread",
            ),
            (
                "atomic-pwrite-4k-fsync",
                Some("auto"),
                0,
                "random 4 KiB pwrite + fsync every {f}, failure-atomic (kernel: plain)",
            ),
            (
                "atomic-undo-pwrite-4k-fsync",
                Some("undo"),
                0,
                "as atomic-pwrite, undo logging forced (FLEX_ATOMIC_POLICY=undo)",
            ),
            (
                "rw9-4k-fsync",
                None,
                9,
                "9 random 4 KiB preads per pwrite, fsync every {f} pwrites, 1 thread",
            ),
            (
                "atomic-rw9-4k-fsync",
                Some("auto"),
                9,
                "as rw9, failure-atomic, policy auto (kernel: plain)",
            ),
            (
                "atomic-redo-rw9-4k-fsync",
                Some("redo"),
                9,
                "as rw9, failure-atomic, redo logging forced",
            ),
            (
                "atomic-undo-rw9-4k-fsync",
                Some("undo"),
                9,
                "as rw9, failure-atomic, undo logging forced",
            ),
        ];
        for (stem, policy, reads, what) in variants {
            let name = format!("{stem}{f}");
            let mut args = common("pwrite", &m.data_file, 4096, 1);
            args.extend([
                "--size".into(),
                size.clone(),
                "--fsync-every".into(),
                f.to_string(),
                "--reads-per-write".into(),
                reads.to_string(),
            ]);
            let what = what.replace("{f}", &f.to_string());
            let calls: &[&str] = if reads > 0 {
                &["pwrite", "pread"]
            } else {
                &["pwrite"]
            };
            let mut job = worker_job(
                name.clone(),
                cell(
                    &name,
                    CellKind::Builtin,
                    Unit::NsPerOp,
                    served(calls),
                    &what,
                ),
                false,
                args,
            );
            if let Some(p) = policy {
                job.flex_env = vec![
                    ("FLEX_MODE".into(), "atomic".into()),
                    ("FLEX_ATOMIC_POLICY".into(), p.into()),
                ];
            }
            jobs.push(job);
        }
    }
    for (wl, what) in [
        ("pipe", "write or read of 1 byte on a pipe (passthrough)"),
        (
            "socket",
            "write or read of 1 byte on a Unix socket (passthrough)",
        ),
    ] {
        let name = format!("passthrough-{wl}");
        let args = vec![wl.to_string(), "--seconds".into(), secs.clone()];
        jobs.push(worker_job(
            name.clone(),
            cell(
                &name,
                CellKind::Builtin,
                Unit::NsPerOp,
                Expect::Passthrough,
                what,
            ),
            false,
            args,
        ));
    }
    jobs
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

/// The processes of the multi-process cells.
pub(crate) const MP_PROCS: usize = 4;
/// Inserts per transaction of the mp-sqlite cells.
pub(crate) const MP_SQLITE_ROWS: usize = 5;

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

/// Finds an executable on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
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

/// The real-client jobs, and the clients that are missing (name, reason).
pub(crate) fn client_jobs(
    m: &Matrix,
    work: &Path,
    sz: &ClientSizes,
) -> (Vec<Job>, Vec<(String, String)>) {
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    let client = |name: &str, expect: Expect, what: &str| CellDef {
        name: name.to_string(),
        kind: CellKind::Client,
        unit: Unit::OpsPerSec,
        expect,
        what: what.to_string(),
    };
    if which("fio").is_some() {
        let base = |engine: &str, rw: &str| -> Vec<String> {
            let mut v: Vec<String> = vec![
                "--name=flexbench".into(),
                format!("--filename={}", m.data_file.display()),
                format!("--size={}", m.file_size),
                "--bs=4k".into(),
                format!("--rw={rw}"),
                format!("--ioengine={engine}"),
                format!("--runtime={}ms", sz.fio_ms),
                "--time_based".into(),
                "--norandommap".into(),
                "--randrepeat=0".into(),
                "--invalidate=0".into(),
                "--numjobs=1".into(),
            ];
            if sz.fio_thread {
                v.push("--thread".into());
            }
            v
        };
        let engines: [(&str, &str, &str); 4] = [
            ("psync", "pread", "pwrite"),
            ("sync", "read", "write"),
            ("pvsync", "preadv", "pwritev"),
            ("pvsync2", "preadv2", "pwritev2"),
        ];
        for (engine, rcall, wcall) in engines {
            for (label, rw, fsync) in [
                ("randread", "randread", false),
                ("randwrite", "randwrite", false),
                ("write", "write", false),
                ("randwrite-fsync", "randwrite", true),
            ] {
                let name = format!("fio-{engine}-{label}");
                let mut args = base(engine, rw);
                if fsync {
                    args.push("--fsync=1".into());
                }
                let call = if rw == "randread" { rcall } else { wcall };
                let what = format!("fio {engine} 4 KiB {label}");
                jobs.push(Job {
                    name: name.clone(),
                    cells: vec![client(&name, served(&[call]), &what)],
                    kernel_only: false,
                    kind: JobKind::Fio(args),
                    flex_env: Vec::new(),
                });
            }
        }
        for rw in ["randread", "randwrite"] {
            let name = format!("fio-mmap-{rw}");
            jobs.push(Job {
                name: name.clone(),
                cells: vec![client(
                    &name,
                    Expect::Nothing,
                    &format!("fio mmap engine 4 KiB {rw} (ceiling)"),
                )],
                kernel_only: false,
                kind: JobKind::Fio(base("mmap", rw)),
                flex_env: Vec::new(),
            });
        }
    } else {
        skipped.push(("fio".into(), "fio not found on PATH".into()));
    }
    match which("db_bench").or_else(|| which("rocksdb_db_bench")) {
        Some(exe) => {
            let db = work.join("flexbench-rocksdb");
            let args = vec![
                format!("--db={}", db.display()),
                "--benchmarks=fillrandom,readrandom".into(),
                format!("--num={}", sz.db_num),
                format!("--reads={}", sz.db_num / 2),
                "--cache_size=1048576".into(),
                // Small memtables, so the data is flushed to SST files and readrandom
                // reads them with pread instead of finding everything in the memtable.
                "--write_buffer_size=2097152".into(),
                "--target_file_size_base=2097152".into(),
                "--compression_type=none".into(),
                "--value_size=100".into(),
                "--threads=1".into(),
            ];
            jobs.push(Job {
                name: "dbbench".into(),
                cells: vec![
                    client(
                        "dbbench-fillrandom",
                        served(&["write"]),
                        "RocksDB db_bench fillrandom",
                    ),
                    client(
                        "dbbench-readrandom",
                        served(&["pread"]),
                        "RocksDB db_bench readrandom, 1 MiB block cache",
                    ),
                ],
                kernel_only: false,
                kind: JobKind::DbBench { exe, args, db },
                flex_env: Vec::new(),
            });
        }
        None => skipped.push((
            "db_bench".into(),
            "db_bench not found on PATH (Debian: rocksdb-tools)".into(),
        )),
    }
    if which("sqlite3").is_some() {
        for wal in [true, false] {
            let mode = if wal { "wal" } else { "rollback" };
            let name = format!("sqlite-{mode}");
            jobs.push(Job {
                name: name.clone(),
                cells: vec![client(
                    &name,
                    served(&["pwrite", "pread", "write", "read"]),
                    &format!(
                        "sqlite3 shell, {mode} journal: {} insert transactions of 20 rows + {} range selects, statements/s",
                        sz.sqlite_txns, sz.sqlite_selects
                    ),
                )],
                kernel_only: false,
                kind: JobKind::Sqlite {
                    wal,
                    txns: sz.sqlite_txns,
                    rows: 20,
                    selects: sz.sqlite_selects,
                    db: work.join(format!("flexbench-{mode}.db")),
                },
                flex_env: Vec::new(),
            });
        }
    } else {
        skipped.push(("sqlite3".into(), "sqlite3 not found on PATH".into()));
    }
    match (which("redis-server"), which("redis-benchmark")) {
        (Some(_), Some(_)) => jobs.push(Job {
            name: "redis".into(),
            cells: vec![
                client(
                    "redis-set",
                    served(&["write"]),
                    "redis-benchmark SET, appendonly + appendfsync always",
                ),
                client("redis-get", Expect::Nothing, "redis-benchmark GET"),
            ],
            kernel_only: false,
            kind: JobKind::Redis {
                requests: sz.redis_requests,
                dir: work.join("flexbench-redis"),
            },
            flex_env: Vec::new(),
        }),
        _ => skipped.push((
            "redis".into(),
            "redis-server or redis-benchmark not found (Debian: redis-server, redis-tools)".into(),
        )),
    }
    (jobs, skipped)
}

/// The result of one sample.
pub(crate) struct SampleOut {
    pub metrics: Vec<Metric>,
    pub wall: f64,
}

/// Clears the environment of anything flex-related, then sets it for the flex side.
fn set_side(cmd: &mut Command, side: Side, l: &Launch, stats: &Path) {
    for v in ["LD_PRELOAD", "FLEX_PATHS", "FLEX_STATS"] {
        cmd.env_remove(v);
    }
    if side == Side::Flex {
        cmd.env("LD_PRELOAD", l.libflex);
        cmd.env("FLEX_PATHS", l.work);
        cmd.env("FLEX_STATS", stats);
    }
}

/// A command for a real client on this side: plain, or under `flexio run`.
fn client_command(side: Side, l: &Launch, stats: &Path, program: &Path) -> Command {
    if side == Side::Flex && l.use_flexio_run {
        let mut c = Command::new(l.flexio_exe);
        c.arg("run")
            .arg("--paths")
            .arg(l.work)
            .arg("--")
            .arg(program);
        for v in ["LD_PRELOAD", "FLEX_PATHS"] {
            c.env_remove(v);
        }
        c.env("FLEX_STATS", stats);
        c
    } else {
        let mut c = Command::new(program);
        set_side(&mut c, side, l, stats);
        c
    }
}

/// Runs a child to completion with a watchdog; returns stdout, stderr and wall time.
fn run_child(mut cmd: Command, timeout: Duration) -> anyhow::Result<(String, String, f64)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if cmd.get_program().is_empty() {
        bail!("empty program");
    }
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let (out, err) = drain(&mut child);
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            // SAFETY: kill on the pid of our own child, which we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        } else {
            false
        }
    });
    let status = child.wait()?;
    let wall = t0.elapsed().as_secs_f64();
    let _ = tx.send(());
    let killed = dog.join().unwrap_or(false);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if killed {
        bail!("timed out after {:?}; stderr: {}", timeout, tail(&err));
    }
    if !status.success() {
        bail!("exited with {status}; stderr: {}", tail(&err));
    }
    Ok((out, err, wall))
}

type Reader = std::thread::JoinHandle<String>;

fn drain(child: &mut Child) -> (Reader, Reader) {
    fn reader<R: Read + Send + 'static>(r: Option<R>) -> Reader {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    }
    (reader(child.stdout.take()), reader(child.stderr.take()))
}

pub(crate) fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Runs one sample of `job` on `side`.
pub(crate) fn run_sample(
    job: &Job,
    side: Side,
    l: &Launch,
    stats: &Path,
) -> anyhow::Result<SampleOut> {
    let timeout = Duration::from_secs_f64(l.seconds * 20.0 + 120.0);
    match &job.kind {
        JobKind::Worker(args) => {
            let mut cmd = Command::new(l.flexio_exe);
            cmd.arg("bench-worker").args(args);
            // Errors as one message, without a backtrace.
            cmd.env("RUST_LIB_BACKTRACE", "0");
            set_side(&mut cmd, side, l, stats);
            if side == Side::Flex {
                cmd.envs(job.flex_env.iter().map(|(k, v)| (k, v)));
            }
            let (out, _, wall) = run_child(cmd, timeout)?;
            let line = out
                .lines()
                .rev()
                .find(|x| x.trim_start().starts_with('{'))
                .context("worker printed no JSON line")?;
            let r: WorkerResult = serde_json::from_str(line).context("worker JSON")?;
            let m = Metric {
                cell: job.cells[0].name.clone(),
                ops: r.ops,
                seconds: r.seconds,
                ops_per_sec: r.ops_per_sec,
                ns_per_op: r.ns_per_op,
                bytes: r.bytes,
            };
            Ok(SampleOut {
                metrics: vec![m],
                wall,
            })
        }
        JobKind::Fio(args) => {
            let exe = which("fio").context("fio")?;
            let mut cmd = client_command(side, l, stats, &exe);
            cmd.args(args).arg("--output-format=json");
            let (out, _, wall) = run_child(cmd, timeout)?;
            let metric = parse_fio(&job.cells[0].name, &out)?;
            Ok(SampleOut {
                metrics: vec![metric],
                wall,
            })
        }
        JobKind::DbBench { exe, args, db } => {
            let _ = std::fs::remove_dir_all(db);
            let mut cmd = client_command(side, l, stats, exe);
            cmd.args(args);
            let r = run_child(cmd, timeout);
            let _ = std::fs::remove_dir_all(db);
            let (out, _, wall) = r?;
            let metrics = parse_db_bench(&out, &job.cells)?;
            Ok(SampleOut { metrics, wall })
        }
        JobKind::Sqlite {
            wal,
            txns,
            rows,
            selects,
            db,
        } => {
            let script = l.scratch.join(format!("{}.sql", job.name));
            std::fs::write(&script, sqlite_script(*wal, *txns, *rows, *selects))?;
            remove_sqlite(db);
            let exe = which("sqlite3").context("sqlite3")?;
            let mut cmd = client_command(side, l, stats, &exe);
            cmd.arg("-batch")
                .arg("-bail")
                .arg(db)
                .stdin(std::fs::File::open(&script)?);
            let r = run_child(cmd, timeout);
            remove_sqlite(db);
            let (out, _, wall) = r?;
            let expect_rows = (*txns * *rows) as u64;
            if !out
                .lines()
                .any(|x| x.trim() == format!("rows={expect_rows}"))
            {
                bail!("sqlite3 script did not finish: {}", tail(&out));
            }
            let ops = (*txns + *selects) as u64;
            Ok(SampleOut {
                metrics: vec![Metric::from_rate(&job.cells[0].name, ops, wall, 0)],
                wall,
            })
        }
        JobKind::Redis { requests, dir } => run_redis(job, side, l, stats, *requests, dir, timeout),
        JobKind::SqliteMp {
            procs,
            txns,
            rows,
            db,
        } => run_sqlite_mp(job, side, l, stats, (*procs, *txns, *rows), db, timeout),
    }
}

/// The script of mp-sqlite writer `p`: `txns` transactions of `rows` inserts, then `done=p`.
pub(crate) fn sqlite_mp_script(p: usize, txns: usize, rows: usize) -> String {
    // The busy timeout is long: a writer waits for the others, it never gives up.
    let mut s = String::from(".timeout 600000\nPRAGMA synchronous=FULL;\n");
    for _ in 0..txns {
        s.push_str("BEGIN IMMEDIATE;");
        for _ in 0..rows {
            s.push_str(&format!(
                " INSERT INTO t(p, v) VALUES ({p}, randomblob(100));"
            ));
        }
        s.push_str(" COMMIT;\n");
    }
    s.push_str(&format!("SELECT 'done=' || {p};\n"));
    s
}

fn run_sqlite_mp(
    job: &Job,
    side: Side,
    l: &Launch,
    stats: &Path,
    (procs, txns, rows): (usize, usize, usize),
    db: &Path,
    timeout: Duration,
) -> anyhow::Result<SampleOut> {
    let exe = which("sqlite3").context("sqlite3")?;
    let shell = |script: &Path, side: Side| -> anyhow::Result<Command> {
        let mut cmd = client_command(side, l, stats, &exe);
        if side == Side::Flex {
            cmd.envs(job.flex_env.iter().map(|(k, v)| (k, v)));
        }
        cmd.arg("-batch")
            .arg("-bail")
            .arg(db)
            .stdin(std::fs::File::open(script)?);
        Ok(cmd)
    };
    remove_sqlite(db);
    let result = (|| -> anyhow::Result<SampleOut> {
        // The schema, untimed, on this side.
        let init = l.scratch.join(format!("{}-init.sql", job.name));
        std::fs::write(
            &init,
            "PRAGMA journal_mode=DELETE;\n\
             CREATE TABLE t(k INTEGER PRIMARY KEY, p INTEGER, v BLOB);\n",
        )?;
        run_child(shell(&init, side)?, timeout).context("create the database")?;
        let scripts: Vec<PathBuf> = (0..procs)
            .map(|p| {
                let f = l.scratch.join(format!("{}-{p}.sql", job.name));
                std::fs::write(&f, sqlite_mp_script(p, txns, rows)).map(|_| f)
            })
            .collect::<std::io::Result<_>>()?;
        let cmds: Vec<Command> = scripts
            .iter()
            .map(|s| shell(s, side))
            .collect::<anyhow::Result<_>>()?;
        let t0 = Instant::now();
        let outs: Vec<anyhow::Result<(String, String, f64)>> = std::thread::scope(|sc| {
            let hs: Vec<_> = cmds
                .into_iter()
                .map(|c| sc.spawn(move || run_child(c, timeout)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("writer thread panicked")))
                .collect()
        });
        let wall = t0.elapsed().as_secs_f64();
        for (p, o) in outs.into_iter().enumerate() {
            let (out, _, _) = o.with_context(|| format!("sqlite3 writer {p}"))?;
            if !out.lines().any(|x| x.trim() == format!("done={p}")) {
                bail!("sqlite3 writer {p} did not finish: {}", tail(&out));
            }
        }
        // The check, by the kernel's sqlite3 (no preload): what flex left is the file.
        let check = l.scratch.join(format!("{}-check.sql", job.name));
        std::fs::write(
            &check,
            "SELECT 'rows=' || count(*) FROM t;\nPRAGMA integrity_check;\n",
        )?;
        let (out, _, _) =
            run_child(shell(&check, Side::Kernel)?, timeout).context("check the database")?;
        let expect = procs * txns * rows;
        if !out.lines().any(|x| x.trim() == format!("rows={expect}")) {
            bail!(
                "LOST ROWS: {} writers x {txns} transactions x {rows} inserts = {expect} rows, \
                 but the database says: {}",
                procs,
                tail(&out)
            );
        }
        if !out.lines().any(|x| x.trim() == "ok") {
            bail!("integrity_check failed: {}", tail(&out));
        }
        Ok(SampleOut {
            metrics: vec![Metric::from_rate(
                &job.cells[0].name,
                (procs * txns) as u64,
                wall,
                0,
            )],
            wall,
        })
    })();
    remove_sqlite(db);
    result
}

fn remove_sqlite(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A scripted SQLite workload: insert transactions, then indexed range selects.
/// The last line it prints is `rows=<n>`, which proves it ran to the end.
pub(crate) fn sqlite_script(wal: bool, txns: usize, rows: usize, selects: usize) -> String {
    let mut s = String::new();
    s.push_str(if wal {
        "PRAGMA journal_mode=WAL;\n"
    } else {
        "PRAGMA journal_mode=DELETE;\n"
    });
    s.push_str("PRAGMA synchronous=FULL;\nPRAGMA cache_size=-256;\n");
    s.push_str("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);\n");
    for _ in 0..txns {
        s.push_str(&format!(
            "BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{rows}) \
             INSERT INTO t(v) SELECT randomblob(200) FROM c; COMMIT;\n"
        ));
    }
    let total = (txns * rows).max(1) as u64;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..selects {
        let a = rng.u64(1..=total);
        s.push_str(&format!(
            "SELECT count(*) FROM t WHERE k BETWEEN {a} AND {} AND length(v) > 0;\n",
            a + 9
        ));
    }
    s.push_str("SELECT 'rows=' || count(*) FROM t;\n");
    s
}

pub(crate) fn parse_fio(cell: &str, out: &str) -> anyhow::Result<Metric> {
    // fio may print notes before the JSON document.
    let start = out.find('{').context("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(&out[start..]).context("fio JSON")?;
    let job = v.pointer("/jobs/0").context("fio JSON has no jobs")?;
    let mut iops = 0.0;
    let mut ios = 0u64;
    let mut bytes = 0u64;
    for dir in ["read", "write"] {
        iops += job
            .pointer(&format!("/{dir}/iops"))
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0);
        ios += job
            .pointer(&format!("/{dir}/total_ios"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
        bytes += job
            .pointer(&format!("/{dir}/io_bytes"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
    }
    let secs = job
        .get("job_runtime")
        .and_then(|x| x.as_f64())
        .unwrap_or(0.0)
        / 1000.0;
    if iops <= 0.0 {
        bail!("fio reported no IO");
    }
    Ok(Metric {
        cell: cell.into(),
        ops: ios,
        seconds: secs,
        ops_per_sec: iops,
        ns_per_op: 1e9 / iops,
        bytes,
    })
}

/// Parses db_bench's `name : X micros/op N ops/sec S seconds K operations;` lines.
pub(crate) fn parse_db_bench(out: &str, cells: &[CellDef]) -> anyhow::Result<Vec<Metric>> {
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let toks: Vec<&str> = rest.split_whitespace().collect();
        let num_before = |unit: &str| -> Option<f64> {
            let i = toks.iter().position(|t| t.trim_end_matches(';') == unit)?;
            toks.get(i.checked_sub(1)?)?.parse().ok()
        };
        if let Some(ops_s) = num_before("ops/sec") {
            let secs = num_before("seconds").unwrap_or(0.0);
            let ops = num_before("operations").unwrap_or(0.0) as u64;
            found.insert(name.trim().to_string(), (ops_s, secs, ops));
        }
    }
    cells
        .iter()
        .map(|c| {
            let bench = c.name.trim_start_matches("dbbench-");
            let &(ops_s, secs, ops) = found
                .get(bench)
                .with_context(|| format!("db_bench printed no result for {bench}"))?;
            if ops_s <= 0.0 {
                bail!("db_bench {bench}: 0 ops/sec");
            }
            Ok(Metric {
                cell: c.name.clone(),
                ops,
                seconds: secs,
                ops_per_sec: ops_s,
                ns_per_op: 1e9 / ops_s,
                bytes: 0,
            })
        })
        .collect()
}

/// Parses `redis-benchmark --csv`: `"SET","81300.81",...`.
pub(crate) fn parse_redis_csv(
    out: &str,
    requests: u64,
    cells: &[CellDef],
) -> anyhow::Result<Vec<Metric>> {
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line
            .split(',')
            .map(|x| x.trim().trim_matches('"'))
            .collect();
        if f.len() >= 2 {
            if let Ok(rps) = f[1].parse::<f64>() {
                found.insert(f[0].to_ascii_lowercase(), rps);
            }
        }
    }
    cells
        .iter()
        .map(|c| {
            let t = c.name.trim_start_matches("redis-");
            let &rps = found
                .get(t)
                .with_context(|| format!("redis-benchmark printed no {t} line"))?;
            if rps <= 0.0 {
                bail!("redis-benchmark {t}: 0 requests/s");
            }
            Ok(Metric {
                cell: c.name.clone(),
                ops: requests,
                seconds: requests as f64 / rps,
                ops_per_sec: rps,
                ns_per_op: 1e9 / rps,
                bytes: 0,
            })
        })
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn redis_cmd(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(cmd.as_bytes())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn run_redis(
    job: &Job,
    side: Side,
    l: &Launch,
    stats: &Path,
    requests: u64,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<SampleOut> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let server_exe = which("redis-server").context("redis-server")?;
    let mut cmd = client_command(side, l, stats, &server_exe);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
    ])
    .arg("--dir")
    .arg(dir)
    .args([
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
    ])
    .args(["--logfile", "", "--loglevel", "warning"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut server = cmd.spawn().context("spawn redis-server")?;
    let (_, server_err) = drain(&mut server);
    let result = (|| -> anyhow::Result<SampleOut> {
        let t0 = Instant::now();
        loop {
            if matches!(redis_cmd(port, "PING\r\n"), Ok(r) if r.starts_with("+PONG")) {
                break;
            }
            if let Some(st) = server.try_wait()? {
                bail!("redis-server exited early: {st}");
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("redis-server did not answer PING on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut bench = Command::new(which("redis-benchmark").context("redis-benchmark")?);
        set_side(&mut bench, Side::Kernel, l, stats);
        bench.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "-c",
            "8",
            "-d",
            "100",
            "--csv",
            "-n",
        ]);
        bench.arg(requests.to_string());
        let (out, _, wall) = run_child(bench, timeout)?;
        Ok(SampleOut {
            metrics: parse_redis_csv(&out, requests, &job.cells)?,
            wall,
        })
    })();
    let _ = redis_cmd(port, "SHUTDOWN NOSAVE\r\n");
    let t0 = Instant::now();
    while server.try_wait()?.is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            let _ = server.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = server_err.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    result.map_err(|e| e.context(format!("redis-server stderr: {}", tail(&err))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(names: &[&str]) -> Vec<CellDef> {
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
    fn parses_db_bench() {
        let out = "Read rate: 0 ops/second\n\
                   fillrandom   :       6.933 micros/op 144226 ops/sec 1.387 seconds 200000 operations;   16.0 MB/s\n\
                   readrandom   :       4.072 micros/op 245546 ops/sec 0.407 seconds 100000 operations;   17.2 MB/s (63150 of 100000 found)\n";
        let m = parse_db_bench(out, &cells(&["dbbench-fillrandom", "dbbench-readrandom"])).unwrap();
        assert_eq!(m[0].ops_per_sec, 144226.0);
        assert_eq!(m[0].ops, 200000);
        assert_eq!(m[1].ops_per_sec, 245546.0);
        assert!((m[1].seconds - 0.407).abs() < 1e-9);
        assert!(parse_db_bench("nothing", &cells(&["dbbench-fillrandom"])).is_err());
    }

    #[test]
    fn parses_redis_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"81300.81\",\"0.062\"\n\"GET\",\"79365.08\",\"0.061\"\n";
        let m = parse_redis_csv(out, 1000, &cells(&["redis-set", "redis-get"])).unwrap();
        assert_eq!(m[0].ops_per_sec, 81300.81);
        assert_eq!(m[1].ops_per_sec, 79365.08);
    }

    #[test]
    fn parses_fio_json() {
        let out = "note: something\n{\"jobs\":[{\"job_runtime\":300,\"read\":{\"iops\":1000.5,\"total_ios\":300,\"io_bytes\":1228800},\"write\":{\"iops\":0,\"total_ios\":0,\"io_bytes\":0}}]}";
        let m = parse_fio("fio-psync-randread", out).unwrap();
        assert_eq!(m.ops_per_sec, 1000.5);
        assert_eq!(m.ops, 300);
        assert!((m.seconds - 0.3).abs() < 1e-9);
    }

    #[test]
    fn sqlite_script_ends_with_a_count() {
        let s = sqlite_script(true, 3, 20, 5);
        assert!(s.starts_with("PRAGMA journal_mode=WAL;"));
        assert_eq!(s.matches("COMMIT;").count(), 3);
        assert_eq!(s.matches("BETWEEN").count(), 5);
        assert!(s.trim_end().ends_with("FROM t;"));
    }

    #[test]
    fn sqlite_mp_script_counts() {
        let s = sqlite_mp_script(2, 3, 5);
        assert!(s.starts_with(".timeout "));
        assert_eq!(s.matches("BEGIN IMMEDIATE;").count(), 3);
        assert_eq!(s.matches("COMMIT;").count(), 3);
        assert_eq!(s.matches("VALUES (2,").count(), 15);
        assert!(s.trim_end().ends_with("SELECT 'done=' || 2;"));
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
