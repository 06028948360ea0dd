//! The Markdown report (BENCHMARKS.md): how the run was made, the table, the targets and
//! the cells.

use std::fmt::Write as _;
use std::path::Path;

use super::{markdown_table, markdown_targets, CellSummary, RunInfo, Target};

/// The Markdown report of a run; the chart `svg`, if any, is linked relative to `md`.
pub(crate) fn markdown(
    run: &RunInfo,
    cells: &[CellSummary],
    targets: &[Target],
    svg: Option<&Path>,
    md: &Path,
) -> String {
    let (args, cfg, m) = (run.args, run.cfg, &run.machine);
    let (command, skipped, elapsed) = (&run.command, run.skipped, run.elapsed);
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
    s.push_str(&markdown_table(cells));
    let _ = writeln!(s, "\n## Targets\n");
    s.push_str(&markdown_targets(targets));
    let _ = writeln!(s, "\n## Cells\n");
    for c in cells {
        let _ = writeln!(s, "- `{}`: {}", c.name, c.what);
    }
    s
}
