//! fio: the psync, sync, pvsync and pvsync2 engines on the data file, and the mmap engine
//! as the ceiling.

use anyhow::{bail, Context};

use super::{client, served, which, ClientSizes, Expect, Job, JobKind, Matrix, Metric};

/// The fio cells, or fio in `skipped` when it is missing.
pub(super) fn jobs(
    m: &Matrix,
    sz: &ClientSizes,
    jobs: &mut Vec<Job>,
    skipped: &mut Vec<(String, String)>,
) {
    if which("fio").is_some() {
        let base = |engine: &str, rw: &str| -> Vec<String> {
            let mut v: Vec<String> = vec![
                "--name=flexbench".into(),
                format!("--filename={}", m.data_file.display()),
                format!("--size={}", m.file_size),
                "--bs=4k".into(),
                format!("--rw={rw}"),
                format!("--ioengine={engine}"),
                format!("--runtime={}ms", sz.fio_ms),
                "--time_based".into(),
                "--norandommap".into(),
                "--randrepeat=0".into(),
                "--invalidate=0".into(),
                "--numjobs=1".into(),
            ];
            if sz.fio_thread {
                v.push("--thread".into());
            }
            v
        };
        let engines: [(&str, &str, &str); 4] = [
            ("psync", "pread", "pwrite"),
            ("sync", "read", "write"),
            ("pvsync", "preadv", "pwritev"),
            ("pvsync2", "preadv2", "pwritev2"),
        ];
        for (engine, rcall, wcall) in engines {
            for (label, rw, fsync) in [
                ("randread", "randread", false),
                ("randwrite", "randwrite", false),
                ("write", "write", false),
                ("randwrite-fsync", "randwrite", true),
            ] {
                let name = format!("fio-{engine}-{label}");
                let mut args = base(engine, rw);
                if fsync {
                    args.push("--fsync=1".into());
                }
                let call = if rw == "randread" { rcall } else { wcall };
                let what = format!("fio {engine} 4 KiB {label}");
                jobs.push(Job {
                    name: name.clone(),
                    cells: vec![client(&name, served(&[call]), &what)],
                    kernel_only: false,
                    kind: JobKind::Fio(args),
                    flex_env: Vec::new(),
                });
            }
        }
        for rw in ["randread", "randwrite"] {
            let name = format!("fio-mmap-{rw}");
            jobs.push(Job {
                name: name.clone(),
                cells: vec![client(
                    &name,
                    Expect::Nothing,
                    &format!("fio mmap engine 4 KiB {rw} (ceiling)"),
                )],
                kernel_only: false,
                kind: JobKind::Fio(base("mmap", rw)),
                flex_env: Vec::new(),
            });
        }
    } else {
        skipped.push(("fio".into(), "fio not found on PATH".into()));
    }
}

pub(super) fn parse_fio(cell: &str, out: &str) -> anyhow::Result<Metric> {
    // fio may print notes before the JSON document.
    let start = out.find('{').context("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(&out[start..]).context("fio JSON")?;
    let job = v.pointer("/jobs/0").context("fio JSON has no jobs")?;
    let mut iops = 0.0;
    let mut ios = 0u64;
    let mut bytes = 0u64;
    for dir in ["read", "write"] {
        iops += job
            .pointer(&format!("/{dir}/iops"))
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0);
        ios += job
            .pointer(&format!("/{dir}/total_ios"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
        bytes += job
            .pointer(&format!("/{dir}/io_bytes"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
    }
    let secs = job
        .get("job_runtime")
        .and_then(|x| x.as_f64())
        .unwrap_or(0.0)
        / 1000.0;
    if iops <= 0.0 {
        bail!("fio reported no IO");
    }
    Ok(Metric {
        cell: cell.into(),
        ops: ios,
        seconds: secs,
        ops_per_sec: iops,
        ns_per_op: 1e9 / iops,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json() {
        let out = "note: something\n{\"jobs\":[{\"job_runtime\":300,\"read\":{\"iops\":1000.5,\"total_ios\":300,\"io_bytes\":1228800},\"write\":{\"iops\":0,\"total_ios\":0,\"io_bytes\":0}}]}";
        let m = parse_fio("fio-psync-randread", out).unwrap();
        assert_eq!(m.ops_per_sec, 1000.5);
        assert_eq!(m.ops, 300);
        assert!((m.seconds - 0.3).abs() < 1e-9);
    }
}
