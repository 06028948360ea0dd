//! The lead's performance targets, evaluated on a run (informational).

use std::fmt::Write as _;

use serde::Serialize;

use super::summary::{CellSummary, SideStat};
use super::table::fmt_ratio;
use crate::jobs::CellKind;

/// One of the lead's performance targets, evaluated on this run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    pub name: String,
    pub goal: String,
    pub value: Option<f64>,
    pub shown: String,
    pub met: Option<bool>,
}

pub(crate) fn targets(cells: &[CellSummary]) -> Vec<Target> {
    let get = |n: &str| cells.iter().find(|c| c.name == n);
    let mut out = Vec::new();
    let mut push =
        |name: String, goal: String, value: Option<f64>, shown: String, met: Option<bool>| {
            out.push(Target {
                name,
                goal,
                value,
                shown,
                met,
            })
        };
    // ns-level bounds.
    let delta = |a: Option<&SideStat>, b: Option<&SideStat>| {
        Some(a?.median_ns_per_op - b?.median_ns_per_op)
    };
    let pread = get("pread-4k-t1");
    let memcpy = get("memcpy-4k-t1");
    let d = delta(
        pread.and_then(|c| c.flex.as_ref()),
        memcpy.and_then(|c| c.kernel.as_ref()),
    );
    push(
        "pread 4 KiB vs bare memcpy".into(),
        "flex pread-4k-t1 <= memcpy-4k-t1 + 60 ns".into(),
        d,
        d.map(|d| format!("memcpy + {d:.1} ns"))
            .unwrap_or_else(|| "-".into()),
        d.map(|d| d <= 60.0),
    );
    for kind in ["pipe", "socket"] {
        let c = get(&format!("passthrough-{kind}"));
        let d = c.and_then(|c| delta(c.flex.as_ref(), c.kernel.as_ref()));
        push(
            format!("passthrough call on a {kind}"),
            "flex <= libc + 20 ns per call".into(),
            d,
            d.map(|d| format!("{d:+.1} ns per call"))
                .unwrap_or_else(|| "-".into()),
            d.map(|d| d <= 20.0),
        );
    }
    let c = get("process-start");
    let d = c.and_then(|c| delta(c.flex.as_ref(), c.kernel.as_ref()));
    push(
        "process start (exec of /bin/true)".into(),
        "flex <= kernel + 50 us per exec".into(),
        d,
        d.map(|d| format!("{:+.1} us per exec", d / 1000.0))
            .unwrap_or_else(|| "-".into()),
        d.map(|d| d <= 50_000.0),
    );
    for (cell, goal) in [
        ("pread-512-t1", 2.8),
        ("pread-4k-t1", 2.0),
        ("pwrite-4k-t1", 2.3),
        ("append-4k-t1", 2.0),
        ("smallfiles-4k-t1", 1.0),
        // Failure-atomic flex against the kernel's plain (non-atomic) pwrite + fsync.
        ("atomic-pwrite-4k-fsync16", 1.5),
        // Four processes appending to one file (issue 10): no slower than the kernel.
        ("mp-append-4k", 0.97),
    ] {
        let r = get(cell).and_then(|c| c.ratio);
        push(
            format!("{cell} flex/kernel"),
            format!(">= {goal:.2}x"),
            r,
            fmt_ratio(r),
            r.map(|r| r >= goal),
        );
    }
    for rw in ["randread", "randwrite"] {
        let psync = get(&format!("fio-psync-{rw}"))
            .and_then(|c| c.flex.as_ref())
            .map(|s| s.median_ops_per_sec);
        let mmap = get(&format!("fio-mmap-{rw}"))
            .and_then(|c| c.kernel.as_ref())
            .map(|s| s.median_ops_per_sec);
        let r = match (psync, mmap) {
            (Some(p), Some(m)) if m > 0.0 => Some(p / m),
            _ => None,
        };
        push(
            format!("fio psync {rw} under flex vs fio mmap engine"),
            ">= 0.95x".into(),
            r,
            fmt_ratio(r),
            r.map(|r| r >= 0.95),
        );
    }
    for c in cells
        .iter()
        .filter(|c| c.kind == CellKind::Client && !c.name.starts_with("fio-mmap"))
    {
        push(
            format!("{} flex/kernel", c.name),
            ">= 0.97x".into(),
            c.ratio,
            fmt_ratio(c.ratio),
            c.ratio.map(|r| r >= 0.97),
        );
    }
    out
}

fn met_label(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

pub(crate) fn text_targets(t: &[Target]) -> String {
    let w = t.iter().map(|x| x.name.len()).max().unwrap_or(0);
    let g = t.iter().map(|x| x.goal.len()).max().unwrap_or(0);
    let mut s = String::new();
    for x in t {
        let _ = writeln!(
            s,
            "{:<w$}  {:<g$}  {:>22}  {}",
            x.name,
            x.goal,
            x.shown,
            met_label(x.met)
        );
    }
    s
}

pub(crate) fn markdown_targets(t: &[Target]) -> String {
    let mut s = String::from("| target | goal | this run | |\n|---|---|---:|---|\n");
    for x in t {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            x.name,
            x.goal,
            x.shown,
            met_label(x.met)
        );
    }
    s
}
