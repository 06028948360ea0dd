//! `flexio bench`: FLEX against the kernel, side by side.
//!
//! Every cell of the matrix is measured in child processes: `flexio bench-worker ...` for
//! the built-in workloads, the real program for the clients. Each repetition runs the
//! kernel side (no preload) and the flex side (`LD_PRELOAD=libflex.so`,
//! `FLEX_PATHS=<work dir>`, `FLEX_STATS=<file>`) back to back, alternating which goes
//! first (K F, F K, K F, ...), so both pay the same process costs and drift hits both.
//! The table shows the median with min and max over the repetitions and the ratio of the
//! median throughputs, flex/kernel (> 1: flex is faster).

mod jobs;
mod report;
mod worker;

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use worker::{worker, WorkerArgs, WorkerResult, Workload};

use jobs::{ClientSizes, Job, JobKind, Launch, Matrix, Side};
use report::{CellSummary, Sample};

/// Options of `flexio bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Short run (under 2 minutes on a 2-core machine): 256 MiB data file, 3 repetitions,
    /// 0.25 s per sample. Explicit options below still override it.
    #[arg(long)]
    pub quick: bool,
    /// Directory (file system) to benchmark in; a scratch subdirectory is made and removed.
    #[arg(long, default_value = "/dev/shm")]
    pub dir: PathBuf,
    /// Repetitions per side and cell [default: 5, quick: 3].
    #[arg(long)]
    pub reps: Option<u32>,
    /// Seconds of timed work per built-in sample [default: 1, quick: 0.25].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Thread counts for the built-in workloads, comma-separated [default: 1,2].
    #[arg(long, value_delimiter = ',')]
    pub threads: Option<Vec<usize>>,
    /// IO sizes of the random pread/pwrite/memcpy cells, comma-separated (k/M suffixes)
    /// [default: 512,4k,64k].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<u64>>,
    /// Size of the random-IO data file (k/M/G suffixes) [default: 1G, quick: 256M].
    #[arg(long, value_parser = parse_size)]
    pub file_size: Option<u64>,
    /// Number of 4 KiB files of the small-files cell [default: 10000].
    #[arg(long)]
    pub small_files: Option<usize>,
    /// Most bytes one append sample writes (k/M/G); the sample ends early when reached.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub append_cap: u64,
    /// The fsync interval of the append-with-fsync cell (0: no such cell).
    #[arg(long, default_value_t = 16)]
    pub fsync_every: u64,
    /// Run only cells whose name contains one of these substrings (repeatable or
    /// comma-separated), e.g. `--filter pread-4k,passthrough`.
    #[arg(long, value_delimiter = ',')]
    pub filter: Vec<String>,
    /// Also run the real clients that are installed (fio, db_bench, sqlite3, redis);
    /// `scripts/bench-clients-install` installs them.
    #[arg(long)]
    pub clients: bool,
    /// Run fio's jobs as threads (`--thread`) rather than forked processes.
    #[arg(long)]
    pub fio_thread: bool,
    /// Run only the real clients (implies --clients).
    #[arg(long)]
    pub clients_only: bool,
    /// Write every sample, the summaries and the machine to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a bar chart of the flex/kernel ratios to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write a Markdown report (table, command, machine, targets, chart link), e.g.
    /// BENCHMARKS.md; the chart goes to --svg or next to it with the .svg extension.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// List the cells that would run, and exit.
    #[arg(long)]
    pub list: bool,
    /// The preload library (default: the one the CLI found).
    #[arg(long)]
    pub libflex: Option<PathBuf>,
    /// Keep the scratch directory (data files) at the end.
    #[arg(long)]
    pub keep_files: bool,
}

/// What the CLI knows: its own executable (for `bench-worker` and `run`) and libflex.so.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    pub flexio_exe: PathBuf,
    pub libflex: PathBuf,
}

/// Parses `4096`, `4k`, `256M`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
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

/// The resolved configuration of a run.
struct Config {
    reps: u32,
    seconds: f64,
    file_size: u64,
    small_count: usize,
    append_cap: u64,
    sizes: Vec<usize>,
    threads: Vec<usize>,
    clients: ClientSizes,
}

impl Config {
    fn new(a: &BenchArgs) -> anyhow::Result<Config> {
        let q = a.quick;
        let c = Config {
            reps: a.reps.unwrap_or(if q { 3 } else { 5 }),
            seconds: a.seconds.unwrap_or(if q { 0.25 } else { 1.0 }),
            file_size: a.file_size.unwrap_or(if q { 256 << 20 } else { 1 << 30 }),
            small_count: a.small_files.unwrap_or(10_000),
            append_cap: a.append_cap,
            sizes: a
                .sizes
                .clone()
                .unwrap_or(vec![512, 4096, 65536])
                .into_iter()
                .map(|s| s as usize)
                .collect(),
            threads: a.threads.clone().unwrap_or(vec![1, 2]),
            clients: if q {
                ClientSizes {
                    fio_ms: 500,
                    db_num: 100_000,
                    sqlite_txns: 200,
                    sqlite_selects: 2000,
                    redis_requests: 20_000,
                    fio_thread: a.fio_thread,
                    mp_sqlite_txns: 100,
                }
            } else {
                ClientSizes {
                    fio_ms: 3000,
                    db_num: 500_000,
                    sqlite_txns: 1000,
                    sqlite_selects: 20_000,
                    redis_requests: 100_000,
                    fio_thread: a.fio_thread,
                    mp_sqlite_txns: 500,
                }
            },
        };
        if c.reps == 0
            || c.seconds.is_nan()
            || c.seconds <= 0.0
            || c.threads.is_empty()
            || c.threads.contains(&0)
        {
            bail!("--reps, --seconds and --threads must be positive");
        }
        if c.sizes.iter().any(|&s| s == 0 || s as u64 > c.file_size) {
            bail!("every --sizes entry must be between 1 and --file-size");
        }
        Ok(c)
    }
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
    let result = run_jobs(
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

#[allow(clippy::too_many_arguments)]
fn run_jobs(
    args: &BenchArgs,
    cfg: &Config,
    jobs: &[Job],
    matrix: &Matrix,
    work: &Path,
    scratch: &Path,
    flexio_exe: &Path,
    libflex: &Path,
    skipped: &[(String, String)],
    dir: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_files(jobs, matrix)?;
    let has_clients = jobs.iter().any(|j| !matches!(j.kind, JobKind::Worker(_)));
    let use_flexio_run = has_clients && flexio_run_works(flexio_exe);
    if has_clients && !use_flexio_run {
        eprintln!(
            "note: `flexio run` is not available; clients get LD_PRELOAD and FLEX_PATHS directly"
        );
    }
    let launch = Launch {
        flexio_exe,
        libflex,
        work,
        scratch,
        use_flexio_run,
        seconds: cfg.seconds,
    };

    let total: u64 = jobs
        .iter()
        .map(|j| cfg.reps as u64 * if j.kernel_only { 1 } else { 2 })
        .sum();
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = mp.add(ProgressBar::new(total));
    overall.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} samples, eta {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let cellbar = mp.add(ProgressBar::new(0));
    cellbar.set_style(
        ProgressStyle::with_template("  {prefix:<28} {bar:20.green} {pos}/{len} {msg}")
            .expect("template"),
    );

    let mut samples: Vec<Sample> = Vec::new();
    let mut summaries: Vec<CellSummary> = Vec::new();
    for (ji, job) in jobs.iter().enumerate() {
        let sides_per_rep = if job.kernel_only { 1 } else { 2 };
        cellbar.set_prefix(job.name.clone());
        cellbar.set_length(cfg.reps as u64 * sides_per_rep);
        cellbar.set_position(0);
        overall.set_message(format!("(job {}/{})", ji + 1, jobs.len()));
        let mut first_error: Option<String> = None;
        for rep in 0..cfg.reps {
            let order: &[Side] = if job.kernel_only {
                &[Side::Kernel]
            } else if rep % 2 == 0 {
                &[Side::Kernel, Side::Flex]
            } else {
                &[Side::Flex, Side::Kernel]
            };
            for &side in order {
                cellbar.set_message(format!("rep {} {}", rep + 1, side.name()));
                let stats = scratch.join(format!("stats-{ji}-{rep}-{}.json", side.name()));
                let _ = std::fs::remove_file(&stats);
                let out = jobs::run_sample(job, side, &launch, &stats);
                let flex_stats = if side == Side::Flex {
                    report::read_stats(&stats)
                } else {
                    None
                };
                let _ = std::fs::remove_file(&stats);
                match out {
                    Ok(o) => {
                        for m in o.metrics {
                            samples.push(Sample {
                                job: job.name.clone(),
                                cell: m.cell,
                                side,
                                rep,
                                ok: true,
                                error: None,
                                ops: m.ops,
                                seconds: m.seconds,
                                ops_per_sec: m.ops_per_sec,
                                ns_per_op: m.ns_per_op,
                                bytes: m.bytes,
                                wall_seconds: o.wall,
                                flex_stats: flex_stats.clone(),
                            });
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        if first_error.is_none() {
                            say(
                                &mp,
                                format!(
                                    "  {} {} rep {}: FAILED: {msg}",
                                    job.name,
                                    side.name(),
                                    rep + 1
                                ),
                            );
                            first_error = Some(msg.clone());
                        }
                        for c in &job.cells {
                            samples.push(Sample {
                                job: job.name.clone(),
                                cell: c.name.clone(),
                                side,
                                rep,
                                ok: false,
                                error: Some(msg.clone()),
                                ops: 0,
                                seconds: 0.0,
                                ops_per_sec: 0.0,
                                ns_per_op: f64::NAN,
                                bytes: 0,
                                wall_seconds: 0.0,
                                flex_stats: flex_stats.clone(),
                            });
                        }
                    }
                }
                cellbar.inc(1);
                overall.inc(1);
            }
        }
        for c in &job.cells {
            let s = report::summarize(c, &samples);
            let flex = if c.kind == jobs::CellKind::Bound {
                "(bound)".to_string()
            } else {
                report::fmt_side(&s.flex, s.unit)
            };
            say(
                &mp,
                format!(
                    "{:<28} kernel {:<34} flex {:<34} {:>7}  {}",
                    s.name,
                    report::fmt_side(&s.kernel, s.unit),
                    flex,
                    report::fmt_ratio(s.ratio),
                    s.flex_status.label()
                ),
            );
            summaries.push(s);
        }
    }
    cellbar.finish_and_clear();
    overall.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    let targets = report::targets(&summaries);
    println!();
    print!("{}", report::text_table(&summaries));
    println!();
    println!("targets (informational):");
    print!("{}", report::text_targets(&targets));
    let not_served: Vec<&str> = summaries
        .iter()
        .filter(|s| {
            matches!(
                s.flex_status,
                report::FlexStatus::NoStats | report::FlexStatus::NotServed
            )
        })
        .map(|s| s.name.as_str())
        .collect();
    if !not_served.is_empty() {
        println!("\nflex did not serve the IO of: {}", not_served.join(", "));
    }
    println!("\n{} samples in {:.0} s", samples.len(), elapsed);

    let command = command_line();
    let machine = machine::Machine::probe(dir);
    let svg_path = args
        .svg
        .clone()
        .or_else(|| args.markdown.as_ref().map(|m| m.with_extension("svg")));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "command": command,
            "mode": if args.quick { "quick" } else { "full" },
            "machine": machine,
            "config": {
                "reps": cfg.reps,
                "seconds": cfg.seconds,
                "file_size": cfg.file_size,
                "small_files": cfg.small_count,
                "sizes": cfg.sizes,
                "threads": cfg.threads,
                "fsync_every": args.fsync_every,
                "libflex": libflex,
                "dir": dir,
                "flexio_run": use_flexio_run,
            },
            "elapsed_seconds": elapsed,
            "skipped": skipped.iter().map(|(n, w)| serde_json::json!({"client": n, "reason": w})).collect::<Vec<_>>(),
            "cells": summaries,
            "targets": targets,
            "samples": samples,
        });
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer_pretty(&mut w, &doc)?;
        writeln!(w)?;
        w.flush()?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(svg) = &svg_path {
        let title = format!(
            "flex / kernel, {} ({})",
            machine.fs,
            if args.quick { "quick" } else { "full" }
        );
        report::write_svg(svg, &summaries, &title)?;
        eprintln!("wrote {}", svg.display());
    }
    if let Some(md) = &args.markdown {
        let text = markdown(
            args,
            cfg,
            &command,
            &machine,
            &summaries,
            &targets,
            skipped,
            svg_path.as_deref(),
            md,
            elapsed,
        );
        std::fs::write(md, text).with_context(|| format!("write {}", md.display()))?;
        eprintln!("wrote {}", md.display());
    }
    Ok(())
}

/// Prints a line above the progress bars, or on stderr when they are hidden (no tty).
fn say(mp: &MultiProgress, line: String) {
    if mp.is_hidden() {
        eprintln!("{line}");
    } else {
        let _ = mp.println(line);
    }
}

/// The command line that made this run, with the executable shown as `flexio`.
fn command_line() -> String {
    let mut a: Vec<String> = std::env::args().collect();
    if !a.is_empty() {
        a[0] = "flexio".into();
    }
    a.iter()
        .map(|x| {
            if x.is_empty() || x.contains(char::is_whitespace) {
                format!("'{x}'")
            } else {
                x.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    args: &BenchArgs,
    cfg: &Config,
    command: &str,
    m: &machine::Machine,
    cells: &[CellSummary],
    targets: &[report::Target],
    skipped: &[(String, String)],
    svg: Option<&Path>,
    md: &Path,
    elapsed: f64,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "FLEX (`libflex.so` preloaded) against the kernel, side by side. Every cell runs as child \
         processes, kernel and flex alternately (K F, F K, ...), {} repetitions each; the table shows the \
         median with [min - max], and **flex/kernel** is the ratio of the median throughputs \
         (> 1: flex is faster). The `flex` column says whether flex's own stats (`FLEX_STATS`) show \
         that it served the cell's calls. Regenerate with the command below.\n",
        cfg.reps
    );
    let _ = writeln!(s, "## Run\n");
    let _ = writeln!(s, "```sh\n{command}\n```\n");
    let _ = writeln!(s, "- date: {} (UTC), {:.0} s", m.date, elapsed);
    let _ = writeln!(
        s,
        "- mode: {}; {} s per built-in sample; data file {} MiB; {} small files",
        if args.quick { "quick" } else { "full" },
        cfg.seconds,
        cfg.file_size >> 20,
        cfg.small_count
    );
    let _ = writeln!(
        s,
        "- machine: {} x {}, {} memory, Linux {}",
        m.nproc, m.cpu, m.memory, m.kernel
    );
    let _ = writeln!(s, "- file system of `{}`: {}", args.dir.display(), m.fs);
    if let Some(rev) = &m.git {
        let _ = writeln!(s, "- commit: {rev}");
    }
    for (name, why) in skipped {
        let _ = writeln!(s, "- skipped {name}: {why}");
    }
    let _ = writeln!(s);
    if let Some(svg) = svg {
        let rel = md
            .parent()
            .and_then(|p| svg.strip_prefix(p).ok())
            .unwrap_or(svg);
        let _ = writeln!(s, "![flex/kernel ratios]({})\n", rel.display());
    }
    let _ = writeln!(s, "## Results\n");
    s.push_str(&report::markdown_table(cells));
    let _ = writeln!(s, "\n## Targets\n");
    s.push_str(&report::markdown_targets(targets));
    let _ = writeln!(s, "\n## Cells\n");
    for c in cells {
        let _ = writeln!(s, "- `{}`: {}", c.name, c.what);
    }
    s
}

/// Creates the data file and the small files the selected jobs need (not timed).
fn prepare_files(jobs: &[Job], m: &Matrix) -> anyhow::Result<()> {
    let uses = |p: &str| {
        jobs.iter().any(|j| match &j.kind {
            JobKind::Worker(a) => a.first().is_some_and(|w| w == p),
            JobKind::Fio(_) => p == "data",
            _ => false,
        })
    };
    if uses("pread") || uses("pwrite") || uses("memcpy") || uses("data") {
        let t = Instant::now();
        fill_file(&m.data_file, m.file_size)?;
        eprintln!(
            "created {} ({} MiB) in {:.1} s",
            m.data_file.display(),
            m.file_size >> 20,
            t.elapsed().as_secs_f64()
        );
    }
    if uses("smallfiles") {
        std::fs::create_dir_all(&m.small_dir)?;
        let mut buf = vec![0u8; 4096];
        for i in 0..m.small_count {
            fill_pattern(&mut buf, i as u64);
            std::fs::write(worker::small_file_path(&m.small_dir, i), &buf)?;
        }
    }
    Ok(())
}

fn fill_pattern(buf: &mut [u8], seed: u64) {
    fastrand::Rng::with_seed(seed).fill(buf);
}

/// Writes `size` bytes of non-zero pseudo-random data (no holes: sparse would be unfair).
fn fill_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        fill_pattern(&mut buf, i);
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
        i += 1;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(())
}

/// Does this flexio have a working `run` subcommand?
fn flexio_run_works(exe: &Path) -> bool {
    Command::new(exe)
        .args(["run", "--help"])
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

mod machine {
    use std::path::Path;

    #[derive(serde::Serialize, Debug)]
    pub(crate) struct Machine {
        pub nproc: usize,
        pub cpu: String,
        pub memory: String,
        pub kernel: String,
        pub fs: String,
        pub date: String,
        pub git: Option<String>,
    }

    impl Machine {
        pub(crate) fn probe(dir: &Path) -> Machine {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let cpu = cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown CPU".into());
            let memory = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    let l = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
                    Some(format!("{:.0} GiB", kb as f64 / (1 << 20) as f64))
                })
                .unwrap_or_else(|| "?".into());
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let git = std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            Machine {
                nproc: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                cpu,
                memory,
                kernel,
                fs: fs_of(dir),
                date: utc_now(),
                git,
            }
        }
    }

    /// "tmpfs (tmpfs on /dev/shm)": the mount that holds `dir`.
    pub(crate) fn fs_of(dir: &Path) -> String {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut best: Option<(usize, String)> = None;
        for l in mounts.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let mnt = f[1].replace("\\040", " ");
            if dir.starts_with(&mnt) && best.as_ref().is_none_or(|(n, _)| mnt.len() >= *n) {
                let opts: Vec<&str> = f[3]
                    .split(',')
                    .filter(|o| *o == "dax" || o.starts_with("dax="))
                    .collect();
                let dax = if opts.is_empty() {
                    String::new()
                } else {
                    format!(", {}", opts.join(","))
                };
                best = Some((mnt.len(), format!("{} ({} on {}{dax})", f[2], f[0], mnt)));
            }
        }
        best.map(|b| b.1).unwrap_or_else(|| "unknown".into())
    }

    /// The current UTC time as `YYYY-MM-DD HH:MM`.
    fn utc_now() -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0) as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60
        )
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn date_is_sane() {
            let d = super::utc_now();
            assert_eq!(d.len(), 16);
            assert!(d.starts_with("20"));
        }
    }
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
