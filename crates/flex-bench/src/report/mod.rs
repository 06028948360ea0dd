//! Summaries, the table, the targets, JSON, Markdown and the SVG chart.

mod plot;
mod stats;
mod summary;
mod table;
mod targets;

pub(crate) use plot::write_svg;
pub(crate) use stats::read_stats;
pub(crate) use summary::{summarize, CellSummary, FlexStatus, Sample};
pub(crate) use table::{fmt_ratio, fmt_side, markdown_table, text_table};
pub(crate) use targets::{markdown_targets, targets, text_targets, Target};
