//! The sqlite3 shell: one shell on a WAL or rollback-journal database, and the writers of
//! the mp-sqlite cells.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::sample::{client_command, run_child, tail, SampleOut};
use super::{client, served, which, ClientSizes, Job, JobKind, Launch, Metric, Side};

/// The sqlite-wal and sqlite-rollback jobs, or sqlite3 in `skipped` when it is missing.
pub(super) fn jobs(
    work: &Path,
    sz: &ClientSizes,
    jobs: &mut Vec<Job>,
    skipped: &mut Vec<(String, String)>,
) {
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
}

/// A scripted SQLite workload: insert transactions, then indexed range selects.
/// The last line it prints is `rows=<n>`, which proves it ran to the end.
pub(super) fn sqlite_script(wal: bool, txns: usize, rows: usize, selects: usize) -> String {
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

pub(super) fn remove_sqlite(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// The script of mp-sqlite writer `p`: `txns` transactions of `rows` inserts, then `done=p`.
fn sqlite_mp_script(p: usize, txns: usize, rows: usize) -> String {
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

pub(super) fn run_sqlite_mp(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
