//! The samples of a cell, summed up: medians, min and max, the flex/kernel ratio, and
//! whether flex served the cell's calls.

use serde::Serialize;

use super::stats::FlexStats;
use crate::jobs::{CellDef, CellKind, Expect, Side, Unit};

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

fn median(v: &mut [f64]) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{text_table, write_svg};

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
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
