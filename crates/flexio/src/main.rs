//! The `flexio` command-line tool (minimal wiring of `bench`; the lead merges the rest).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Benchmark FLEX against the kernel, side by side.
    Bench(flex_bench::BenchArgs),
    /// One sample of a built-in benchmark workload (used by `flexio bench`).
    #[command(hide = true)]
    BenchWorker(flex_bench::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench(args) => {
            let flexio_exe = std::env::current_exe()?;
            let libflex = std::env::var_os("FLEX_LIB")
                .map(PathBuf::from)
                .unwrap_or_else(|| flexio_exe.with_file_name("libflex.so"));
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
