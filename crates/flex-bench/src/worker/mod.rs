//! `flexio bench-worker`: one measured sample of one built-in workload.
//!
//! The worker does its IO with direct `libc::` calls, as a C program would, so that under
//! `LD_PRELOAD=libflex.so` every call goes through the interposed symbol and nothing else
//! (no `std::fs` buffering or extra syscalls) is measured. It sets up outside the timed
//! part, warms up (which also calibrates how many operations fit in about a millisecond),
//! then runs the operation loop for `--seconds`, reading `CLOCK_MONOTONIC` only once per
//! batch, and prints one JSON line.
//!
//! One module per kind of workload (`random_io`, `append`, `smallfiles`, `passthrough`,
//! `mp_append`) sets up its operations; `drive` times them and `sys` owns the descriptors,
//! buffers and mappings they use.

mod append;
mod drive;
mod mp_append;
mod passthrough;
mod random_io;
mod smallfiles;
mod spawn;
mod sys;

use std::path::PathBuf;

use anyhow::{bail, Context};

use drive::drive_all;
use mp_append::{mp_append_child, mp_append_parent};
pub(crate) use smallfiles::small_file_path;

/// The built-in workloads a worker can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Random `pread` of `--bs` bytes from `--file` (`--size` bytes long).
    Pread,
    /// Random `pwrite` of `--bs` bytes into `--file`.
    Pwrite,
    /// `memcpy` from a private mapping of `--file` at the same offsets as `pread`.
    Memcpy,
    /// Sequential `write` of `--bs` bytes to a new file `--file.<thread>`, `fsync`
    /// every `--fsync-every` writes (0: never), at most `--size` bytes in all.
    Append,
    /// `open` + `read` of `--bs` bytes + `close` over `--count` files `--file/fNNNNN`.
    Smallfiles,
    /// `write` then `read` of 1 byte on a pipe: the cost of a call flex passes through.
    Pipe,
    /// `write` then `read` of 1 byte on a Unix socket pair.
    Socket,
    /// posix_spawn of `/bin/true` and a wait for it (the child inherits the environment,
    /// LD_PRELOAD included).
    Spawn,
    /// `--procs` processes at once, each appending `--bs`-byte records with `write` on its
    /// own `O_WRONLY|O_APPEND` descriptor of the one shared file `--file`; at most `--size`
    /// bytes in all. The parent then checks that no record was lost or overwritten.
    MpAppend,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Pread => "pread",
            Workload::Pwrite => "pwrite",
            Workload::Memcpy => "memcpy",
            Workload::Append => "append",
            Workload::Smallfiles => "smallfiles",
            Workload::Pipe => "pipe",
            Workload::Socket => "socket",
            Workload::Spawn => "spawn",
            Workload::MpAppend => "mp-append",
        }
    }
}

/// Arguments of the hidden `flexio bench-worker` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The workload to run.
    #[arg(value_enum)]
    pub(crate) workload: Workload,
    /// Data file (pread, pwrite, memcpy), file prefix (append) or directory (smallfiles).
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// IO size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub(crate) bs: usize,
    /// Size of the data file in bytes (random IO), or the byte cap of append.
    #[arg(long, default_value_t = 0)]
    pub(crate) size: u64,
    /// Number of threads, each with its own RNG stream (and file, for append).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Length of the timed part in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) seconds: f64,
    /// Length of the warm-up in seconds (default: a fifth of --seconds, at least 20 ms).
    #[arg(long)]
    pub(crate) warmup: Option<f64>,
    /// For append and pwrite: fsync every N writes (0: never).
    #[arg(long, default_value_t = 0)]
    pub(crate) fsync_every: u64,
    /// For smallfiles: the number of files.
    #[arg(long, default_value_t = 0)]
    pub(crate) count: usize,
    /// For pwrite: random `pread`s of `--bs` bytes before each `pwrite` (a read-mostly mix;
    /// every call counts as an operation, `--fsync-every` counts writes).
    #[arg(long, default_value_t = 0)]
    pub(crate) reads_per_write: u64,
    /// Seed of the offset sequence (the same for pread, pwrite and memcpy).
    #[arg(long, default_value_t = 0x9E37_79B9_7F4A_7C15)]
    pub(crate) seed: u64,
    /// For mp-append: the number of appending processes (each single-threaded).
    #[arg(long, default_value_t = 4)]
    pub(crate) procs: usize,
    /// For mp-append: run as appending process N of --procs (set by the parent, which
    /// starts the processes, releases them together and checks the file).
    #[arg(long, hide = true)]
    pub(crate) proc_index: Option<usize>,
}

/// The JSON line a worker prints.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub(crate) struct WorkerResult {
    pub workload: String,
    /// Operations (calls, for pipe and socket) in the timed part, all threads.
    pub ops: u64,
    /// Length of the timed part (the longest thread's).
    pub seconds: f64,
    /// `seconds / ops` in ns: the inverse of the aggregate throughput.
    pub ns_per_op: f64,
    pub ops_per_sec: f64,
    /// Bytes moved in the timed part.
    pub bytes: u64,
    pub threads: usize,
    /// Operations in the warm-up, all threads (flex counts them too).
    pub warmup_ops: u64,
}

/// Run one sample and print its JSON line on stdout.
pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let res = run_worker(args)?;
    println!("{}", serde_json::to_string(&res)?);
    Ok(())
}

fn run_worker(args: &WorkerArgs) -> anyhow::Result<WorkerResult> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let warm = args.warmup.unwrap_or((args.seconds / 5.0).max(0.02));
    if args.workload == Workload::MpAppend {
        return match args.proc_index {
            None => mp_append_parent(args, warm),
            Some(i) => mp_append_child(args, i, warm),
        };
    }
    let file = || {
        args.file
            .clone()
            .context("--file is required for this workload")
    };
    // Everything below is set-up, outside the timed part.
    let ops = match args.workload {
        Workload::Pread | Workload::Pwrite | Workload::Memcpy => random_io::ops(args, file()?)?,
        Workload::Append => append::ops(args, file()?)?,
        Workload::Smallfiles => smallfiles::ops(args, file()?)?,
        Workload::MpAppend => unreachable!("handled above"),
        Workload::Pipe | Workload::Socket => passthrough::ops(args)?,
        Workload::Spawn => spawn::ops(args)?,
    };
    let calls_per_op = match args.workload {
        Workload::Pipe | Workload::Socket => 2,
        _ => 1,
    };
    let bytes_per_op = match args.workload {
        Workload::Pipe | Workload::Socket | Workload::Spawn => 1,
        _ => args.bs as u64,
    };

    let (ops_done, warm_ops, seconds) = drive_all(ops, warm, args.seconds)?;
    if ops_done == 0 {
        bail!("no operation in the timed part (the append cap was reached in the warm-up?)");
    }
    let ops = ops_done * calls_per_op;
    Ok(WorkerResult {
        workload: args.workload.name().to_string(),
        ops,
        seconds,
        ns_per_op: seconds * 1e9 / ops.max(1) as f64,
        ops_per_sec: ops as f64 / seconds,
        bytes: ops_done * bytes_per_op,
        threads: args.threads,
        warmup_ops: warm_ops * calls_per_op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_run_on_a_tiny_file() {
        let dir = std::env::temp_dir().join(format!("flexbench-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        std::fs::write(&data, vec![7u8; 1 << 20]).unwrap();
        let small = dir.join("small");
        std::fs::create_dir_all(&small).unwrap();
        for i in 0..8 {
            std::fs::write(small_file_path(&small, i), vec![1u8; 4096]).unwrap();
        }
        let base = WorkerArgs {
            workload: Workload::Pread,
            file: Some(data.clone()),
            bs: 4096,
            size: 1 << 20,
            threads: 1,
            seconds: 0.01,
            warmup: Some(0.005),
            fsync_every: 0,
            count: 8,
            seed: 1,
            reads_per_write: 0,
            procs: 4,
            proc_index: None,
        };
        // The append cap is far above what 15 ms can write on any machine: a cap the
        // warm-up reaches leaves nothing to time, and on tmpfs 1 MiB takes under 5 ms.
        let no_cap = 1 << 34;
        for (w, file, threads, fsync, size) in [
            (Workload::Pread, &data, 1, 0, base.size),
            (Workload::Pread, &data, 2, 0, base.size),
            (Workload::Pwrite, &data, 2, 0, base.size),
            (Workload::Memcpy, &data, 1, 0, base.size),
            (Workload::Append, &dir.join("log"), 2, 4, no_cap),
            (Workload::Smallfiles, &small, 2, 0, base.size),
            (Workload::Pipe, &data, 1, 0, base.size),
            (Workload::Socket, &data, 1, 0, base.size),
        ] {
            let a = WorkerArgs {
                workload: w,
                file: Some(file.clone()),
                threads,
                fsync_every: fsync,
                size,
                ..base.clone()
            };
            let r = run_worker(&a).unwrap_or_else(|e| panic!("{w:?}: {e:#}"));
            assert!(r.ops > 0, "{w:?}");
            assert!(r.seconds > 0.0, "{w:?}");
            assert_eq!(r.threads, threads);
        }
        // The read-mostly mix: every call counts, one in four writes.
        let mix = WorkerArgs {
            workload: Workload::Pwrite,
            reads_per_write: 3,
            fsync_every: 2,
            ..base.clone()
        };
        let r = run_worker(&mix).unwrap_or_else(|e| panic!("mix: {e:#}"));
        assert!(r.ops >= 4, "mix: {} ops", r.ops);
        assert!(!dir.join("log.0").exists(), "append removes its files");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
