//! `flexio bench`: FLEX against the kernel, side by side.
//!
//! Every cell of the matrix is measured in child processes: `flexio bench-worker ...` for
//! the built-in workloads, the real program for the clients. Each repetition runs the
//! kernel side (no preload) and the flex side (`LD_PRELOAD=libflex.so`,
//! `FLEX_PATHS=<work dir>`, `FLEX_STATS=<file>`) back to back, alternating which goes
//! first (K F, F K, K F, ...), so both pay the same process costs and drift hits both.
//! The table shows the median with min and max over the repetitions and the ratio of the
//! median throughputs, flex/kernel (> 1: flex is faster).

mod config;
mod data_files;
mod jobs;
mod machine;
mod report;
mod runner;
mod worker;

use std::path::PathBuf;

use anyhow::{bail, Context};

pub use worker::{worker, WorkerArgs};

use config::Config;
use jobs::Matrix;

/// Options of `flexio bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Short run (under 2 minutes on a 2-core machine): 256 MiB data file, 3 repetitions,
    /// 0.25 s per sample. Explicit options below still override it.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Directory (file system) to benchmark in; a scratch subdirectory is made and removed.
    #[arg(long, default_value = "/dev/shm")]
    pub(crate) dir: PathBuf,
    /// Repetitions per side and cell [default: 5, quick: 3].
    #[arg(long)]
    pub(crate) reps: Option<u32>,
    /// Seconds of timed work per built-in sample [default: 1, quick: 0.25].
    #[arg(long)]
    pub(crate) seconds: Option<f64>,
    /// Thread counts for the built-in workloads, comma-separated [default: 1,2].
    #[arg(long, value_delimiter = ',')]
    pub(crate) threads: Option<Vec<usize>>,
    /// IO sizes of the random pread/pwrite/memcpy cells, comma-separated (k/M suffixes)
    /// [default: 512,4k,64k].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub(crate) sizes: Option<Vec<u64>>,
    /// Size of the random-IO data file (k/M/G suffixes) [default: 1G, quick: 256M].
    #[arg(long, value_parser = parse_size)]
    pub(crate) file_size: Option<u64>,
    /// Number of 4 KiB files of the small-files cell [default: 10000].
    #[arg(long)]
    pub(crate) small_files: Option<usize>,
    /// Most bytes one append sample writes (k/M/G); the sample ends early when reached.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub(crate) append_cap: u64,
    /// The fsync interval of the append-with-fsync cell (0: no such cell).
    #[arg(long, default_value_t = 16)]
    pub(crate) fsync_every: u64,
    /// Run only cells whose name contains one of these substrings (repeatable or
    /// comma-separated), e.g. `--filter pread-4k,passthrough`.
    #[arg(long, value_delimiter = ',')]
    pub(crate) filter: Vec<String>,
    /// Also run the real clients that are installed (fio, db_bench, sqlite3, redis);
    /// `scripts/bench-clients-install` installs them.
    #[arg(long)]
    pub(crate) clients: bool,
    /// Run fio's jobs as threads (`--thread`) rather than forked processes.
    #[arg(long)]
    pub(crate) fio_thread: bool,
    /// Run only the real clients (implies --clients).
    #[arg(long)]
    pub(crate) clients_only: bool,
    /// Write every sample, the summaries and the machine to this JSON file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Write a bar chart of the flex/kernel ratios to this SVG file.
    #[arg(long)]
    pub(crate) svg: Option<PathBuf>,
    /// Write a Markdown report (table, command, machine, targets, chart link), e.g.
    /// BENCHMARKS.md; the chart goes to --svg or next to it with the .svg extension.
    #[arg(long)]
    pub(crate) markdown: Option<PathBuf>,
    /// List the cells that would run, and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// The preload library (default: the one the CLI found).
    #[arg(long)]
    pub(crate) libflex: Option<PathBuf>,
    /// Keep the scratch directory (data files) at the end.
    #[arg(long)]
    pub(crate) keep_files: bool,
}

/// What the CLI knows: its own executable (for `bench-worker` and `run`) and libflex.so.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    pub flexio_exe: PathBuf,
    pub libflex: PathBuf,
}

/// Parses `4096`, `4k`, `256M`, `1G` (binary units).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Runs the benchmark suite.
pub fn run(args: &BenchArgs, env: &BenchEnv) -> anyhow::Result<()> {
    let cfg = Config::new(args)?;
    let libflex = args.libflex.clone().unwrap_or_else(|| env.libflex.clone());
    let libflex = std::fs::canonicalize(&libflex).with_context(|| {
        format!(
            "libflex.so not found at {} (build it: cargo build -p flex-preload)",
            libflex.display()
        )
    })?;
    let flexio_exe = std::fs::canonicalize(&env.flexio_exe).context("flexio executable")?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("--dir {}", args.dir.display()))?;
    let pid = std::process::id();
    let work = dir.join(format!("flexbench-{pid}"));
    let scratch = std::env::temp_dir().join(format!("flexbench-{pid}-scratch"));
    if work == scratch {
        bail!("--dir must not be the system temporary directory's scratch path");
    }

    let matrix = Matrix {
        data_file: work.join("data.bin"),
        file_size: cfg.file_size,
        small_dir: work.join("small"),
        small_count: cfg.small_count,
        append_prefix: work.join("append.log"),
        append_cap: cfg.append_cap,
        sizes: cfg.sizes.clone(),
        threads: cfg.threads.clone(),
        fsync_every: args.fsync_every,
        seconds: cfg.seconds,
    };
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    if !args.clients_only {
        jobs.extend(jobs::builtin_jobs(&matrix));
    }
    // The multi-process cells: with the built-in ones; the SQLite ones also with
    // --clients-only, since they are real clients.
    let (mj, sk) = jobs::mp_jobs(&matrix, &work, &cfg.clients);
    jobs.extend(mj.into_iter().filter(|j| {
        !args.clients_only || j.cells.iter().all(|c| c.kind == jobs::CellKind::Client)
    }));
    skipped.extend(sk);
    if args.clients || args.clients_only {
        let (cj, sk) = jobs::client_jobs(&matrix, &work, &cfg.clients);
        jobs.extend(cj);
        skipped.extend(sk);
    }
    if !args.filter.is_empty() {
        let keep = |name: &str| args.filter.iter().any(|f| name.contains(f.as_str()));
        jobs.retain(|j| keep(&j.name) || j.cells.iter().any(|c| keep(&c.name)));
    }
    if args.list {
        for j in &jobs {
            for c in &j.cells {
                println!("{:<28} {}", c.name, c.what);
            }
        }
        for (name, why) in &skipped {
            println!("{name:<28} skipped: {why}");
        }
        return Ok(());
    }
    if jobs.is_empty() {
        bail!("no cell matches --filter {:?}", args.filter);
    }

    let mode = if args.quick { "quick" } else { "full" };
    eprintln!(
        "flexio bench ({mode}): {} cells, {} reps, {} s per sample, data file {} MiB, in {} ({})",
        jobs.iter().map(|j| j.cells.len()).sum::<usize>(),
        cfg.reps,
        cfg.seconds,
        cfg.file_size >> 20,
        dir.display(),
        machine::fs_of(&dir)
    );
    if args.quick {
        eprintln!("quick mode: smaller data file (256 MiB), 3 reps, 0.25 s samples; the full run uses 1 GiB, 5 reps, 1 s");
    }
    for (name, why) in &skipped {
        eprintln!("skipping client {name}: {why}");
    }

    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    std::fs::create_dir_all(&scratch)?;
    let result = runner::run_jobs(
        args,
        &cfg,
        &jobs,
        &matrix,
        &work,
        &scratch,
        &flexio_exe,
        &libflex,
        &skipped,
        &dir,
    );
    if !args.keep_files {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("kept {}", work.display());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("k").is_err());
    }
}
