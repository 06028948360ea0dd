//! Summaries, the table, the targets, JSON, Markdown and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::jobs::{CellDef, CellKind, Expect, Side, Unit};

/// What flex's stats file said after one flex-side sample.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct FlexStats {
    /// Lines (processes) in the stats file.
    pub processes: usize,
    pub served: BTreeMap<String, u64>,
    pub passthrough: BTreeMap<String, u64>,
    /// Lines that were not JSON objects.
    pub unparsed: usize,
    /// Top-level numeric fields (bytes_read, maps, ...), summed over the processes.
    pub counters: BTreeMap<String, f64>,
    /// The `fallbacks` maps (reason -> count), summed.
    pub fallbacks: BTreeMap<String, u64>,
}

/// Reads a FLEX_STATS file: one JSON object per process, each with `served` and
/// `passthrough` maps of call name to count; anything else is ignored. `None` if the
/// file is missing or empty.
pub(crate) fn read_stats(path: &Path) -> Option<FlexStats> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut st = FlexStats::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            st.unparsed += 1;
            continue;
        };
        st.processes += 1;
        for (k, v) in &o {
            if let Some(x) = v.as_f64() {
                *st.counters.entry(k.clone()).or_default() += x;
            }
        }
        if let Some(serde_json::Value::Object(m)) = o.get("fallbacks") {
            for (why, n) in m {
                *st.fallbacks.entry(why.clone()).or_default() += n.as_u64().unwrap_or(1);
            }
        }
        for (key, map) in [
            ("served", &mut st.served),
            ("passthrough", &mut st.passthrough),
        ] {
            if let Some(serde_json::Value::Object(m)) = o.get(key) {
                for (call, n) in m {
                    if let Some(n) = n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)) {
                        *map.entry(call.clone()).or_default() += n;
                    }
                }
            }
        }
    }
    (st.processes > 0 || st.unparsed > 0).then_some(st)
}

/// One sample of one cell on one side: every number the JSON keeps.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Sample {
    pub cell: String,
    pub job: String,
    pub side: Side,
    pub rep: u32,
    pub ok: bool,
    pub error: Option<String>,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub ns_per_op: f64,
    pub bytes: u64,
    /// Wall time of the whole child process (set-up included).
    pub wall_seconds: f64,
    /// Flex side only: the stats file, `None` when flex wrote none.
    pub flex_stats: Option<FlexStats>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SideStat {
    pub n: usize,
    pub median_ops_per_sec: f64,
    pub min_ops_per_sec: f64,
    pub max_ops_per_sec: f64,
    pub median_ns_per_op: f64,
    pub min_ns_per_op: f64,
    pub max_ns_per_op: f64,
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn side_stat(samples: &[&Sample]) -> Option<SideStat> {
    let ok: Vec<&&Sample> = samples.iter().filter(|s| s.ok).collect();
    if ok.is_empty() {
        return None;
    }
    let mut t: Vec<f64> = ok.iter().map(|s| s.ops_per_sec).collect();
    let mut l: Vec<f64> = ok.iter().map(|s| s.ns_per_op).collect();
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
    Some(SideStat {
        n: ok.len(),
        min_ops_per_sec: fold(&t, f64::min, f64::INFINITY),
        max_ops_per_sec: fold(&t, f64::max, 0.0),
        median_ops_per_sec: median(&mut t),
        min_ns_per_op: fold(&l, f64::min, f64::INFINITY),
        max_ns_per_op: fold(&l, f64::max, 0.0),
        median_ns_per_op: median(&mut l),
    })
}

/// Did flex serve a cell's IO?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FlexStatus {
    /// Every flex sample's stats show the expected calls served.
    Served,
    /// Stats present (flex loaded) and the calls passed through as they should.
    Passthrough,
    /// Stats present, but the expected calls were not served (in some sample).
    NotServed,
    /// No stats file after some flex sample: flex was not loaded or did not write one.
    NoStats,
    /// Nothing to check (bounds, fio's mmap engine) or no flex samples.
    NotApplicable,
}

impl FlexStatus {
    pub(crate) fn label(self) -> &'static str {
        match self {
            FlexStatus::Served => "served",
            FlexStatus::Passthrough => "passthrough",
            FlexStatus::NotServed => "NOT SERVED",
            FlexStatus::NoStats => "flex did not serve (no stats)",
            FlexStatus::NotApplicable => "-",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct CellSummary {
    pub name: String,
    pub kind: CellKind,
    pub unit: Unit,
    pub what: String,
    pub kernel: Option<SideStat>,
    pub flex: Option<SideStat>,
    /// flex throughput / kernel throughput (medians): > 1 means flex is faster.
    pub ratio: Option<f64>,
    /// Median of the per-repetition ratios (each flex sample against its paired kernel one).
    pub ratio_paired: Option<f64>,
    pub flex_status: FlexStatus,
    /// The expected calls flex served, summed over the flex samples.
    pub served_calls: u64,
    /// Of the expected calls, the share flex served (the rest it passed through).
    pub served_fraction: Option<f64>,
    pub failed_samples: usize,
}

pub(crate) fn summarize(def: &CellDef, samples: &[Sample]) -> CellSummary {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.cell == def.name).collect();
    let k: Vec<&Sample> = mine
        .iter()
        .copied()
        .filter(|s| s.side == Side::Kernel)
        .collect();
    let f: Vec<&Sample> = mine
        .iter()
        .copied()
        .filter(|s| s.side == Side::Flex)
        .collect();
    let kernel = side_stat(&k);
    let flex = side_stat(&f);
    let ratio = match (&kernel, &flex) {
        (Some(k), Some(f)) if k.median_ops_per_sec > 0.0 => {
            Some(f.median_ops_per_sec / k.median_ops_per_sec)
        }
        _ => None,
    };
    let mut paired: Vec<f64> = f
        .iter()
        .filter(|s| s.ok)
        .filter_map(|fs| {
            k.iter()
                .find(|ks| ks.ok && ks.rep == fs.rep && ks.ops_per_sec > 0.0)
                .map(|ks| fs.ops_per_sec / ks.ops_per_sec)
        })
        .collect();
    let ratio_paired = (!paired.is_empty()).then(|| median(&mut paired));
    let mut served_calls = 0;
    let mut passed_calls = 0;
    let flex_done: Vec<&&Sample> = f.iter().filter(|s| s.ok).collect();
    let flex_status = if flex_done.is_empty() {
        FlexStatus::NotApplicable
    } else if flex_done.iter().any(|s| s.flex_stats.is_none()) {
        if matches!(def.expect, Expect::Nothing) {
            FlexStatus::NotApplicable
        } else {
            FlexStatus::NoStats
        }
    } else {
        match &def.expect {
            Expect::Nothing => FlexStatus::NotApplicable,
            Expect::Passthrough => FlexStatus::Passthrough,
            Expect::Served(calls) => {
                let mut all = true;
                for s in &flex_done {
                    let st = s.flex_stats.as_ref().expect("checked above");
                    let n: u64 = calls
                        .iter()
                        .map(|c| st.served.get(*c).copied().unwrap_or(0))
                        .sum();
                    served_calls += n;
                    passed_calls += calls
                        .iter()
                        .map(|c| st.passthrough.get(*c).copied().unwrap_or(0))
                        .sum::<u64>();
                    all &= n > 0;
                }
                if all {
                    FlexStatus::Served
                } else {
                    FlexStatus::NotServed
                }
            }
        }
    };
    CellSummary {
        name: def.name.clone(),
        kind: def.kind,
        unit: def.unit,
        what: def.what.clone(),
        kernel,
        flex,
        ratio,
        ratio_paired,
        flex_status,
        served_calls,
        served_fraction: (served_calls + passed_calls > 0)
            .then(|| served_calls as f64 / (served_calls + passed_calls) as f64),
        failed_samples: mine.iter().filter(|s| !s.ok).count(),
    }
}

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

/// A horizontal bar chart of the flex/kernel ratios with a line at 1.0.
pub(crate) fn write_svg(path: &Path, cells: &[CellSummary], title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let cells: Vec<&CellSummary> = cells.iter().filter(|c| c.ratio.is_some()).collect();
    let n = cells.len().max(1);
    let height = (80 + 22 * n) as u32;
    let max = cells.iter().filter_map(|c| c.ratio).fold(1.0f64, f64::max);
    let xmax = (max * 1.15).max(1.2);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    // The first cell at the top.
    let row = |i: usize| (n - 1 - i) as i32;
    let labels: Vec<String> = cells.iter().rev().map(|c| c.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..xmax, (0..n as i32).into_segmented())
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("flex / kernel throughput (> 1: flex faster)")
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .draw_series(cells.iter().enumerate().map(|(i, c)| {
            let r = c.ratio.unwrap_or(0.0);
            let color = if r >= 1.0 {
                RGBColor(46, 139, 87)
            } else {
                RGBColor(205, 92, 92)
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row(i))),
                    (r, SegmentValue::Exact(row(i) + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .draw_series(cells.iter().enumerate().map(|(i, c)| {
            Text::new(
                format!("{:.2}x", c.ratio.unwrap_or(0.0)),
                (
                    c.ratio.unwrap_or(0.0) + xmax * 0.005,
                    SegmentValue::CenterOf(row(i)),
                ),
                ("sans-serif", 12)
                    .into_font()
                    .into_text_style(&root)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    chart
        .draw_series(LineSeries::new(
            [
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(n as i32)),
            ],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("svg: {e}"))?;
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn stats_are_read_defensively() {
        let dir = std::env::temp_dir().join(format!("flexbench-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        assert!(read_stats(&p).is_none());
        std::fs::write(
            &p,
            "{\"pid\":1,\"served\":{\"pread64\":10,\"open\":1},\"passthrough\":{\"read\":2}}\n\
             not json\n\
             {\"served\":{\"pread64\":5},\"other\":[1,2]}\n",
        )
        .unwrap();
        let s = read_stats(&p).unwrap();
        assert_eq!(s.processes, 2);
        assert_eq!(s.unparsed, 1);
        assert_eq!(s.served["pread64"], 15);
        assert_eq!(s.passthrough["read"], 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn sample(
        cell: &str,
        side: Side,
        rep: u32,
        ops_per_sec: f64,
        stats: Option<FlexStats>,
    ) -> Sample {
        Sample {
            cell: cell.into(),
            job: cell.into(),
            side,
            rep,
            ok: true,
            error: None,
            ops: 1,
            seconds: 1.0,
            ops_per_sec,
            ns_per_op: 1e9 / ops_per_sec,
            bytes: 0,
            wall_seconds: 1.0,
            flex_stats: stats,
        }
    }

    #[test]
    fn summary_ratio_and_status() {
        let def = CellDef {
            name: "pread-4k-t1".into(),
            kind: CellKind::Builtin,
            unit: Unit::NsPerOp,
            expect: Expect::Served(vec!["pread", "pread64"]),
            what: String::new(),
        };
        let mut st = FlexStats {
            processes: 1,
            ..Default::default()
        };
        st.served.insert("pread64".into(), 100);
        let s = vec![
            sample("pread-4k-t1", Side::Kernel, 0, 100.0, None),
            sample("pread-4k-t1", Side::Flex, 0, 250.0, Some(st.clone())),
            sample("pread-4k-t1", Side::Kernel, 1, 110.0, None),
            sample("pread-4k-t1", Side::Flex, 1, 200.0, Some(st)),
            sample("other", Side::Kernel, 0, 1.0, None),
        ];
        let c = summarize(&def, &s);
        assert_eq!(c.kernel.as_ref().unwrap().n, 2);
        assert!((c.ratio.unwrap() - 225.0 / 105.0).abs() < 1e-9);
        assert_eq!(c.flex_status, FlexStatus::Served);
        assert_eq!(c.served_calls, 200);
        let mut no = s.clone();
        no[3].flex_stats = None;
        assert_eq!(summarize(&def, &no).flex_status, FlexStatus::NoStats);
        let mut zero = s.clone();
        zero[1].flex_stats.as_mut().unwrap().served.clear();
        assert_eq!(summarize(&def, &zero).flex_status, FlexStatus::NotServed);
        let table = text_table(std::slice::from_ref(&c));
        assert!(table.contains("pread-4k-t1") && table.contains("2.14x"));
        let dir = std::env::temp_dir().join(format!("flexbench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_svg(&dir.join("c.svg"), &[c], "test").unwrap();
        let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
        assert!(svg.contains("pread-4k-t1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
