//! The JSON report: every sample, the summaries, the targets, the machine and the
//! configuration.

use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::Context;

use super::{CellSummary, RunInfo, Sample, Target};

/// Writes the JSON document of a run to `path`.
pub(crate) fn write_json(
    path: &Path,
    run: &RunInfo,
    summaries: &[CellSummary],
    targets: &[Target],
    samples: &[Sample],
) -> anyhow::Result<()> {
    let (args, cfg, command, machine) = (run.args, run.cfg, &run.command, &run.machine);
    let (libflex, dir, use_flexio_run) = (run.libflex, run.dir, run.flexio_run);
    let (skipped, elapsed) = (run.skipped, run.elapsed);
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
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::new(f);
    serde_json::to_writer_pretty(&mut w, &doc)?;
    writeln!(w)?;
    w.flush()?;
    Ok(())
}
