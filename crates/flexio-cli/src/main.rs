//! `flexio`: run programs under FLEX, recover files, benchmark against the kernel.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(
    name = "flexio",
    version,
    about = "FLEX: file IO served from memory mappings"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a program with its file IO served by FLEX (LD_PRELOAD of libflex.so).
    Run(RunArgs),
    /// Trim files left over-allocated by a crashed writer to their exact size.
    Recover {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// A point-in-time copy of FILE while flex processes keep writing it.
    Snapshot {
        file: PathBuf,
        /// Where the snapshot goes (replaced if it exists; default FILE.<UTC time>.snap).
        #[arg(long)]
        to: Option<PathBuf>,
        /// How long the writers have to join, in milliseconds (their writes wait at most
        /// this long).
        #[arg(long, default_value_t = 1000)]
        join_timeout_ms: u64,
    },
    /// Summarise a FLEX_STATS file (one JSON line per process).
    Stats { file: PathBuf },
    /// Benchmark FLEX against the kernel, side by side.
    Bench(flex_bench::BenchArgs),
    /// One sample of a built-in benchmark workload (used by `flexio bench`).
    #[command(hide = true)]
    BenchWorker(flex_bench::WorkerArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory whose regular files FLEX manages (repeatable; default: the current directory).
    #[arg(long = "paths", short = 'p')]
    paths: Vec<PathBuf>,
    /// Print a summary of what FLEX served after the program exits.
    #[arg(long)]
    stats: bool,
    /// Also append the per-process JSON statistics to this file (FLEX_STATS).
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Log FLEX's decisions to stderr (FLEX_LOG=debug).
    #[arg(long)]
    debug: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn libflex() -> anyhow::Result<PathBuf> {
    flexio::preload_library()
        .context("libflex.so not found beside flexio (build the workspace, or set FLEX_LIB)")
}

/// The `FLEX_*` variables of this environment that break their rule (the rules are
/// `flex_engine::config`'s, the ones libflex.so applies).
fn config_errors() -> Vec<flex_engine::config::ConfigError> {
    flex_engine::config::Config::parse(|k| std::env::var_os(k)).1
}

fn run(a: RunArgs) -> anyhow::Result<i32> {
    let errors = config_errors();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("flexio: {e}");
        }
        eprintln!(
            "flexio: not running {}: fix or unset the variable{} above",
            a.cmd[0],
            if errors.len() > 1 { "s" } else { "" }
        );
        return Ok(2);
    }
    let lib = libflex()?;
    let paths = if a.paths.is_empty() {
        vec![std::env::current_dir()?]
    } else {
        a.paths
    };
    let mut abs = Vec::new();
    for p in paths {
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()?.join(p)
        };
        abs.push(p.canonicalize().unwrap_or(p).display().to_string());
    }
    let stats_file = match (&a.stats_file, a.stats) {
        (Some(f), _) => Some(f.clone()),
        (None, true) => {
            Some(std::env::temp_dir().join(format!("flexio-stats-{}.json", std::process::id())))
        }
        // Inherited: exported again below, absolute.
        (None, false) => std::env::var_os("FLEX_STATS")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from),
    };
    // Absolute now: a relative name would be resolved in each process's current directory
    // (a program that changes directory would scatter the statistics).
    let stats_file = stats_file.map(std::path::absolute).transpose()?;
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", lib.display()),
        _ => lib.display().to_string(),
    };
    let mut c = Command::new(&a.cmd[0]);
    c.args(&a.cmd[1..])
        .env("LD_PRELOAD", preload)
        .env("FLEX_PATHS", abs.join(":"));
    if let Some(f) = &stats_file {
        c.env("FLEX_STATS", f);
    }
    if a.debug {
        c.env("FLEX_LOG", "debug");
    }
    if !a.stats {
        // Nothing to do after the program: become it. No second process waits beside it,
        // and its exit status (a signal included) is exactly the program's.
        let e = c.exec();
        return Err(e).with_context(|| format!("cannot run {}", a.cmd[0]));
    }
    let status = c
        .status()
        .with_context(|| format!("cannot run {}", a.cmd[0]))?;
    if a.stats {
        if let Some(f) = &stats_file {
            // A missing file: no process started the engine.
            let text = std::fs::read_to_string(f).unwrap_or_default();
            eprint!("{}", summarize(f, &text)?);
            if a.stats_file.is_none() {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The text of a FLEX_STATS file for `flexio stats`: a file that cannot be read, is empty
/// or is not text is an error (no process wrote it, or it is not a stats file).
fn stats_text(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        bail!(
            "{} is empty: no process wrote statistics to it",
            file.display()
        );
    }
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a FLEX_STATS file (not text)", file.display()))
}

/// A readable summary of the text of a FLEX_STATS file.
fn summarize(file: &Path, text: &str) -> anyhow::Result<String> {
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let mut passed: BTreeMap<String, u64> = BTreeMap::new();
    let mut fallbacks: BTreeMap<String, u64> = BTreeMap::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let (mut procs, mut rd, mut wr, mut maps) = (0, 0u64, 0u64, 0u64);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("{}:{}: not a FLEX_STATS record", file.display(), n + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(bad)?;
        if !v["pid"].is_u64() || !v["served"].is_object() || !v["passthrough"].is_object() {
            bail!("{} (no pid, served or passthrough)", bad());
        }
        procs += 1;
        let add = |m: &mut BTreeMap<String, u64>, key: &str| {
            if let Some(o) = v[key].as_object() {
                for (k, n) in o {
                    *m.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
        };
        add(&mut served, "served");
        add(&mut passed, "passthrough");
        add(&mut fallbacks, "fallbacks");
        rd += v["bytes_read"].as_u64().unwrap_or(0);
        wr += v["bytes_written"].as_u64().unwrap_or(0);
        maps += v["maps"].as_u64().unwrap_or(0);
        if let Some(o) = v["files"].as_object() {
            for (k, f) in o {
                files.insert(
                    k.clone(),
                    f["granularity"].as_str().unwrap_or("?").to_string(),
                );
            }
        }
    }
    let fmt = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!("flexio: {procs} process(es) used FLEX\n");
    s += &format!("  served by flex:     {}\n", fmt(&served));
    s += &format!("  passed to kernel:   {}\n", fmt(&passed));
    s += &format!("  bytes read/written from mappings: {rd} / {wr}; mappings created: {maps}\n");
    for (f, g) in &files {
        s += &format!("  file {f}: {g} granularity\n");
    }
    if !fallbacks.is_empty() {
        s += &format!("  fallbacks: {}\n", fmt(&fallbacks));
    }
    Ok(s)
}

/// FILE.<UTC time>.snap, beside FILE.
fn default_snapshot_name(file: &std::path::Path) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: gmtime_r writes into our own struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `now` is a live value.
    unsafe { libc::gmtime_r(&now, &mut tm) };
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
    let mut name = file.as_os_str().to_os_string();
    name.push(format!(".{stamp}.snap"));
    PathBuf::from(name)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => std::process::exit(run(a)?),
        Cmd::Recover { paths } => {
            let mut failed = false;
            for p in paths {
                match flexio::recover_atomic(&p) {
                    Ok(Some(r)) => println!(
                        "{}: atomic log replayed: {} committed transactions, {} uncommitted records discarded, size {}",
                        p.display(),
                        r.txns,
                        r.discarded,
                        r.size
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("{}: atomic recovery: {e}", p.display());
                        failed = true;
                        continue;
                    }
                }
                match flexio::recover(&p) {
                    Ok(flexio::Recovery::Clean) => println!("{}: clean", p.display()),
                    Ok(flexio::Recovery::Trimmed { from, to }) => {
                        println!("{}: trimmed {from} -> {to} bytes", p.display())
                    }
                    Ok(flexio::Recovery::InUse { lsize }) => {
                        println!(
                            "{}: in use by a live process (logical size {lsize}); left alone",
                            p.display()
                        )
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", p.display());
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some files could not be recovered");
            }
            Ok(())
        }
        Cmd::Snapshot {
            file,
            to,
            join_timeout_ms,
        } => {
            let dest = to.unwrap_or_else(|| default_snapshot_name(&file));
            let opts = flexio::snapshot::Options {
                join_timeout: std::time::Duration::from_millis(join_timeout_ms),
                ..Default::default()
            };
            match flexio::snapshot::snapshot(&file, &dest, &opts) {
                Ok(r) => {
                    println!(
                        "{}: {} bytes at one instant, {} writer(s) {:?}, {} page(s) copied by writers, joined in {:.3} ms, {:.3} ms in all",
                        r.dest.display(),
                        r.size,
                        r.writers.len(),
                        r.writers,
                        r.copied_by_writers,
                        r.join_time.as_secs_f64() * 1e3,
                        r.elapsed.as_secs_f64() * 1e3
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("flexio: snapshot of {}: {e}", file.display());
                    std::process::exit(1)
                }
            }
        }
        Cmd::Stats { file } => match stats_text(&file).and_then(|t| summarize(&file, &t)) {
            Ok(s) => {
                print!("{s}");
                Ok(())
            }
            Err(e) => {
                eprintln!("flexio: {e:#}");
                std::process::exit(1)
            }
        },
        Cmd::Bench(args) => {
            let flexio_exe = std::env::current_exe()?;
            let libflex = libflex()?;
            flex_bench::run(
                &args,
                &flex_bench::BenchEnv {
                    flexio_exe,
                    libflex,
                },
            )
        }
        Cmd::BenchWorker(args) => flex_bench::worker(&args),
    }
}
