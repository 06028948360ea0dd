//! The results table, as text (the terminal) and as Markdown.

use std::fmt::Write as _;

use super::summary::{CellSummary, SideStat};
use crate::jobs::{CellKind, Unit};

fn fmt_si(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn fmt_ns(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 1e6 {
        format!("{:.2} ms", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1} us", x / 1e3)
    } else {
        format!("{x:.1} ns")
    }
}

pub(crate) fn fmt_side(s: &Option<SideStat>, unit: Unit) -> String {
    match (s, unit) {
        (None, _) => "-".into(),
        (Some(s), Unit::NsPerOp) => format!(
            "{} [{} - {}]",
            fmt_ns(s.median_ns_per_op),
            fmt_ns(s.min_ns_per_op).trim_end_matches(" ns"),
            fmt_ns(s.max_ns_per_op)
        ),
        (Some(s), Unit::OpsPerSec) => format!(
            "{}/s [{} - {}]",
            fmt_si(s.median_ops_per_sec),
            fmt_si(s.min_ops_per_sec),
            fmt_si(s.max_ops_per_sec)
        ),
    }
}

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

/// The rows of the table: cell, kernel, flex, ratio, flex status.
fn rows(cells: &[CellSummary]) -> Vec<[String; 5]> {
    cells
        .iter()
        .map(|c| {
            let flex = if c.kind == CellKind::Bound {
                "(bound: kernel side only)".into()
            } else {
                fmt_side(&c.flex, c.unit)
            };
            let mut status = c.flex_status.label().to_string();
            if let Some(f) = c.served_fraction {
                status.push_str(&format!(" ({:.0}% of calls)", f * 100.0));
            }
            if c.failed_samples > 0 {
                status.push_str(&format!(", {} failed samples", c.failed_samples));
            }
            [
                c.name.clone(),
                fmt_side(&c.kernel, c.unit),
                flex,
                fmt_ratio(c.ratio),
                status,
            ]
        })
        .collect()
}

const HEADER: [&str; 5] = [
    "cell",
    "kernel median [min - max]",
    "flex median [min - max]",
    "flex/kernel",
    "flex",
];

pub(crate) fn text_table(cells: &[CellSummary]) -> String {
    let rows = rows(cells);
    let mut w = HEADER.map(|h| h.len());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, r: &[String]| {
        let _ = writeln!(
            s,
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    };
    line(&mut s, &HEADER.map(String::from));
    let _ = writeln!(s, "{}", "-".repeat(w.iter().sum::<usize>() + 8));
    for r in &rows {
        line(&mut s, r);
    }
    s
}

pub(crate) fn markdown_table(cells: &[CellSummary]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", HEADER.join(" | "));
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    for r in rows(cells) {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | **{}** | {} |",
            r[0], r[1], r[2], r[3], r[4]
        );
    }
    s
}
