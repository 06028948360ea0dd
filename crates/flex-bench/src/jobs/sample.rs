//! One sample of a job on one side: the side's environment, child processes with a
//! watchdog, and what each kind of job runs.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::db_bench::parse_db_bench;
use super::fio::parse_fio;
use super::redis::run_redis;
use super::sqlite::{remove_sqlite, run_sqlite_mp, sqlite_script};
use super::{which, Job, JobKind, Metric, Side};
use crate::worker::WorkerResult;

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

/// The result of one sample.
pub(crate) struct SampleOut {
    pub metrics: Vec<Metric>,
    pub wall: f64,
}

/// Clears the environment of anything flex-related, then sets it for the flex side.
pub(super) fn set_side(cmd: &mut Command, side: Side, l: &Launch, stats: &Path) {
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
pub(super) fn client_command(side: Side, l: &Launch, stats: &Path, program: &Path) -> Command {
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
pub(super) fn run_child(
    mut cmd: Command,
    timeout: Duration,
) -> anyhow::Result<(String, String, f64)> {
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

pub(super) type Reader = std::thread::JoinHandle<String>;

pub(super) fn drain(child: &mut Child) -> (Reader, Reader) {
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

pub(super) fn tail(s: &str) -> String {
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
