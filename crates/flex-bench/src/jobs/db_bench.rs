//! RocksDB's db_bench: fillrandom and readrandom.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

use super::{client, served, which, CellDef, ClientSizes, Job, JobKind, Metric};

/// The db_bench job, or db_bench in `skipped` when it is missing.
pub(super) fn jobs(
    work: &Path,
    sz: &ClientSizes,
    jobs: &mut Vec<Job>,
    skipped: &mut Vec<(String, String)>,
) {
    match which("db_bench").or_else(|| which("rocksdb_db_bench")) {
        Some(exe) => {
            let db = work.join("flexbench-rocksdb");
            let args = vec![
                format!("--db={}", db.display()),
                "--benchmarks=fillrandom,readrandom".into(),
                format!("--num={}", sz.db_num),
                format!("--reads={}", sz.db_num / 2),
                "--cache_size=1048576".into(),
                // Small memtables, so the data is flushed to SST files and readrandom
                // reads them with pread instead of finding everything in the memtable.
                "--write_buffer_size=2097152".into(),
                "--target_file_size_base=2097152".into(),
                "--compression_type=none".into(),
                "--value_size=100".into(),
                "--threads=1".into(),
            ];
            jobs.push(Job {
                name: "dbbench".into(),
                cells: vec![
                    client(
                        "dbbench-fillrandom",
                        served(&["write"]),
                        "RocksDB db_bench fillrandom",
                    ),
                    client(
                        "dbbench-readrandom",
                        served(&["pread"]),
                        "RocksDB db_bench readrandom, 1 MiB block cache",
                    ),
                ],
                kernel_only: false,
                kind: JobKind::DbBench { exe, args, db },
                flex_env: Vec::new(),
            });
        }
        None => skipped.push((
            "db_bench".into(),
            "db_bench not found on PATH (Debian: rocksdb-tools)".into(),
        )),
    }
}

/// Parses db_bench's `name : X micros/op N ops/sec S seconds K operations;` lines.
pub(super) fn parse_db_bench(out: &str, cells: &[CellDef]) -> anyhow::Result<Vec<Metric>> {
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let toks: Vec<&str> = rest.split_whitespace().collect();
        let num_before = |unit: &str| -> Option<f64> {
            let i = toks.iter().position(|t| t.trim_end_matches(';') == unit)?;
            toks.get(i.checked_sub(1)?)?.parse().ok()
        };
        if let Some(ops_s) = num_before("ops/sec") {
            let secs = num_before("seconds").unwrap_or(0.0);
            let ops = num_before("operations").unwrap_or(0.0) as u64;
            found.insert(name.trim().to_string(), (ops_s, secs, ops));
        }
    }
    cells
        .iter()
        .map(|c| {
            let bench = c.name.trim_start_matches("dbbench-");
            let &(ops_s, secs, ops) = found
                .get(bench)
                .with_context(|| format!("db_bench printed no result for {bench}"))?;
            if ops_s <= 0.0 {
                bail!("db_bench {bench}: 0 ops/sec");
            }
            Ok(Metric {
                cell: c.name.clone(),
                ops,
                seconds: secs,
                ops_per_sec: ops_s,
                ns_per_op: 1e9 / ops_s,
                bytes: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::tests::cells;

    #[test]
    fn parses_db_bench() {
        let out = "Read rate: 0 ops/second\n\
                   fillrandom   :       6.933 micros/op 144226 ops/sec 1.387 seconds 200000 operations;   16.0 MB/s\n\
                   readrandom   :       4.072 micros/op 245546 ops/sec 0.407 seconds 100000 operations;   17.2 MB/s (63150 of 100000 found)\n";
        let m = parse_db_bench(out, &cells(&["dbbench-fillrandom", "dbbench-readrandom"])).unwrap();
        assert_eq!(m[0].ops_per_sec, 144226.0);
        assert_eq!(m[0].ops, 200000);
        assert_eq!(m[1].ops_per_sec, 245546.0);
        assert!((m[1].seconds - 0.407).abs() < 1e-9);
        assert!(parse_db_bench("nothing", &cells(&["dbbench-fillrandom"])).is_err());
    }
}
