//! The run itself: every repetition of every job, kernel and flex sides interleaved, under
//! progress bars; then the table, the targets and the reports.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::data_files::prepare_files;
use crate::jobs::{self, Job, JobKind, Launch, Matrix, Side};
use crate::machine::Machine;
use crate::report::{self, CellSummary, RunInfo, Sample};
use crate::BenchArgs;

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_jobs(
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

    let run = RunInfo {
        args,
        cfg,
        command: command_line(),
        machine: Machine::probe(dir),
        libflex,
        dir,
        flexio_run: use_flexio_run,
        skipped,
        elapsed,
    };
    let svg_path = args
        .svg
        .clone()
        .or_else(|| args.markdown.as_ref().map(|m| m.with_extension("svg")));
    if let Some(path) = &args.json {
        report::write_json(path, &run, &summaries, &targets, &samples)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(svg) = &svg_path {
        let title = format!(
            "flex / kernel, {} ({})",
            run.machine.fs,
            if args.quick { "quick" } else { "full" }
        );
        report::write_svg(svg, &summaries, &title)?;
        eprintln!("wrote {}", svg.display());
    }
    if let Some(md) = &args.markdown {
        let text = report::markdown(&run, &summaries, &targets, svg_path.as_deref(), md);
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
