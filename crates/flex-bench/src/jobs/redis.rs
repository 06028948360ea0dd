//! redis-server with an fsync per write (appendfsync always), driven by redis-benchmark
//! on loopback.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::sample::{client_command, drain, run_child, set_side, tail, SampleOut};
use super::{
    client, served, which, CellDef, ClientSizes, Expect, Job, JobKind, Launch, Metric, Side,
};

/// The redis job, or redis in `skipped` when a program is missing.
pub(super) fn jobs(
    work: &Path,
    sz: &ClientSizes,
    jobs: &mut Vec<Job>,
    skipped: &mut Vec<(String, String)>,
) {
    match (which("redis-server"), which("redis-benchmark")) {
        (Some(_), Some(_)) => jobs.push(Job {
            name: "redis".into(),
            cells: vec![
                client(
                    "redis-set",
                    served(&["write"]),
                    "redis-benchmark SET, appendonly + appendfsync always",
                ),
                client("redis-get", Expect::Nothing, "redis-benchmark GET"),
            ],
            kernel_only: false,
            kind: JobKind::Redis {
                requests: sz.redis_requests,
                dir: work.join("flexbench-redis"),
            },
            flex_env: Vec::new(),
        }),
        _ => skipped.push((
            "redis".into(),
            "redis-server or redis-benchmark not found (Debian: redis-server, redis-tools)".into(),
        )),
    }
}

/// Parses `redis-benchmark --csv`: `"SET","81300.81",...`.
fn parse_redis_csv(out: &str, requests: u64, cells: &[CellDef]) -> anyhow::Result<Vec<Metric>> {
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line
            .split(',')
            .map(|x| x.trim().trim_matches('"'))
            .collect();
        if f.len() >= 2 {
            if let Ok(rps) = f[1].parse::<f64>() {
                found.insert(f[0].to_ascii_lowercase(), rps);
            }
        }
    }
    cells
        .iter()
        .map(|c| {
            let t = c.name.trim_start_matches("redis-");
            let &rps = found
                .get(t)
                .with_context(|| format!("redis-benchmark printed no {t} line"))?;
            if rps <= 0.0 {
                bail!("redis-benchmark {t}: 0 requests/s");
            }
            Ok(Metric {
                cell: c.name.clone(),
                ops: requests,
                seconds: requests as f64 / rps,
                ops_per_sec: rps,
                ns_per_op: 1e9 / rps,
                bytes: 0,
            })
        })
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn redis_cmd(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(cmd.as_bytes())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub(super) fn run_redis(
    job: &Job,
    side: Side,
    l: &Launch,
    stats: &Path,
    requests: u64,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<SampleOut> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let server_exe = which("redis-server").context("redis-server")?;
    let mut cmd = client_command(side, l, stats, &server_exe);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
    ])
    .arg("--dir")
    .arg(dir)
    .args([
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
    ])
    .args(["--logfile", "", "--loglevel", "warning"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut server = cmd.spawn().context("spawn redis-server")?;
    let (_, server_err) = drain(&mut server);
    let result = (|| -> anyhow::Result<SampleOut> {
        let t0 = Instant::now();
        loop {
            if matches!(redis_cmd(port, "PING\r\n"), Ok(r) if r.starts_with("+PONG")) {
                break;
            }
            if let Some(st) = server.try_wait()? {
                bail!("redis-server exited early: {st}");
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("redis-server did not answer PING on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut bench = Command::new(which("redis-benchmark").context("redis-benchmark")?);
        set_side(&mut bench, Side::Kernel, l, stats);
        bench.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "-c",
            "8",
            "-d",
            "100",
            "--csv",
            "-n",
        ]);
        bench.arg(requests.to_string());
        let (out, _, wall) = run_child(bench, timeout)?;
        Ok(SampleOut {
            metrics: parse_redis_csv(&out, requests, &job.cells)?,
            wall,
        })
    })();
    let _ = redis_cmd(port, "SHUTDOWN NOSAVE\r\n");
    let t0 = Instant::now();
    while server.try_wait()?.is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            let _ = server.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = server_err.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    result.map_err(|e| e.context(format!("redis-server stderr: {}", tail(&err))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::tests::cells;

    #[test]
    fn parses_redis_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"81300.81\",\"0.062\"\n\"GET\",\"79365.08\",\"0.061\"\n";
        let m = parse_redis_csv(out, 1000, &cells(&["redis-set", "redis-get"])).unwrap();
        assert_eq!(m[0].ops_per_sec, 81300.81);
        assert_eq!(m[1].ops_per_sec, 79365.08);
    }
}
