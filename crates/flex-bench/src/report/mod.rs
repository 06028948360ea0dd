//! Summaries, the table, the targets, JSON, Markdown and the SVG chart.

mod json;
mod markdown;
mod plot;
mod stats;
mod summary;
mod table;
mod targets;

use std::path::Path;

use crate::config::Config;
use crate::machine::Machine;
use crate::BenchArgs;

pub(crate) use json::write_json;
pub(crate) use markdown::markdown;
pub(crate) use plot::write_svg;
pub(crate) use stats::read_stats;
pub(crate) use summary::{summarize, CellSummary, FlexStatus, Sample};
pub(crate) use table::{fmt_ratio, fmt_side, markdown_table, text_table};
pub(crate) use targets::{markdown_targets, targets, text_targets, Target};

/// What a run was, besides its results: for the JSON and Markdown reports.
pub(crate) struct RunInfo<'a> {
    pub(crate) args: &'a BenchArgs,
    pub(crate) cfg: &'a Config,
    /// The command line, with the executable shown as `flexio`.
    pub(crate) command: String,
    pub(crate) machine: Machine,
    pub(crate) libflex: &'a Path,
    /// The benchmark directory, canonical.
    pub(crate) dir: &'a Path,
    /// Whether flex-side clients ran under `flexio run`.
    pub(crate) flexio_run: bool,
    /// Clients not run: (name, reason).
    pub(crate) skipped: &'a [(String, String)],
    pub(crate) elapsed: f64,
}
