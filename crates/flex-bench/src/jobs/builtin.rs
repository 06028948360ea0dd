//! The built-in cells, each one `flexio bench-worker` process per sample: random IO
//! (pread, pwrite, the memcpy bound), append, small files, pwrite with fsync (plain and
//! failure-atomic), calls flex passes through, and process start.

use std::path::Path;

use super::{cell, served, size_label, worker_job, CellKind, Expect, Job, Matrix, Unit};

/// The built-in jobs, in the order they run.
pub(crate) fn builtin_jobs(m: &Matrix) -> Vec<Job> {
    let mut jobs = Vec::new();
    for &t in &m.threads {
        jobs.extend(random_io_jobs(m, t));
        jobs.extend(append_jobs(m, t));
        jobs.push(smallfiles_job(m, t));
    }
    if m.fsync_every > 0 {
        jobs.extend(fsync_jobs(m));
    }
    jobs.extend(passthrough_jobs(m));
    jobs
}

/// The arguments every worker of a file workload gets.
fn worker_args(m: &Matrix, wl: &str, file: &Path, bs: usize, threads: usize) -> Vec<String> {
    vec![
        wl.to_string(),
        "--file".into(),
        file.display().to_string(),
        "--bs".into(),
        bs.to_string(),
        "--threads".into(),
        threads.to_string(),
        "--seconds".into(),
        format!("{}", m.seconds),
    ]
}

/// Random pread, pwrite and the memcpy bound for every `--sizes` entry, on `t` threads.
fn random_io_jobs(m: &Matrix, t: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    let size = m.file_size.to_string();
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
            let mut args = worker_args(m, wl, &m.data_file, bs, t);
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
    jobs
}

/// Sequential 4 KiB writes on `t` threads, each to its own file: without fsync, and with
/// an fsync every `--fsync-every` writes.
fn append_jobs(m: &Matrix, t: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
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
        let mut args = worker_args(m, "append", &m.append_prefix, 4096, t);
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
    jobs
}

/// open + read 4 KiB + close over the small files, on `t` threads.
fn smallfiles_job(m: &Matrix, t: usize) -> Job {
    let name = format!("smallfiles-4k-t{t}");
    let mut args = worker_args(m, "smallfiles", &m.small_dir, 4096, t);
    args.extend(["--count".into(), m.small_count.to_string()]);
    let what = format!(
        "open + read 4 KiB + close over {} files, {t} thread(s)",
        m.small_count
    );
    worker_job(
        name.clone(),
        cell(
            &name,
            CellKind::Builtin,
            Unit::NsPerOp,
            // Opened lazily: the kernel reads a file opened, read once and closed.
            served(&["open"]),
            &what,
        ),
        false,
        args,
    )
}

/// 4 KiB random pwrite + fsync every N, one thread: flex against the kernel, and flex's
/// failure-atomic mode (FLEX_MODE=atomic; policy auto, and forced redo and undo) against
/// the kernel's plain calls. Then a read-mostly mix (9 preads per pwrite), where the auto
/// policy picks undo logging.
fn fsync_jobs(m: &Matrix) -> Vec<Job> {
    let mut jobs = Vec::new();
    let size = m.file_size.to_string();
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
        let mut args = worker_args(m, "pwrite", &m.data_file, 4096, 1);
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
    jobs
}

/// One byte back and forth on a pipe and on a Unix socket: calls flex passes through;
/// and the start of a process (what loading libflex.so adds to an exec).
fn passthrough_jobs(m: &Matrix) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (wl, what) in [
        ("pipe", "write or read of 1 byte on a pipe (passthrough)"),
        (
            "socket",
            "write or read of 1 byte on a Unix socket (passthrough)",
        ),
    ] {
        let name = format!("passthrough-{wl}");
        let args = vec![wl.to_string(), "--seconds".into(), format!("{}", m.seconds)];
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
    let args = vec!["spawn".into(), "--seconds".into(), format!("{}", m.seconds)];
    jobs.push(worker_job(
        "process-start".into(),
        cell(
            "process-start",
            CellKind::Builtin,
            Unit::NsPerOp,
            Expect::Passthrough,
            "posix_spawn + wait of /bin/true (flex side: libflex.so loaded into each child)",
        ),
        false,
        args,
    ));
    jobs
}
