//! The machine a run measured: CPU, memory, kernel, file system, date and commit.

use std::path::Path;

#[derive(serde::Serialize, Debug)]
pub(crate) struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub fs: String,
    pub date: String,
    pub git: Option<String>,
}

impl Machine {
    pub(crate) fn probe(dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let l = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.0} GiB", kb as f64 / (1 << 20) as f64))
            })
            .unwrap_or_else(|| "?".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let git = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            memory,
            kernel,
            fs: fs_of(dir),
            date: utc_now(),
            git,
        }
    }
}

/// "tmpfs (tmpfs on /dev/shm)": the mount that holds `dir`.
pub(crate) fn fs_of(dir: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let mnt = f[1].replace("\\040", " ");
        if dir.starts_with(&mnt) && best.as_ref().is_none_or(|(n, _)| mnt.len() >= *n) {
            let opts: Vec<&str> = f[3]
                .split(',')
                .filter(|o| *o == "dax" || o.starts_with("dax="))
                .collect();
            let dax = if opts.is_empty() {
                String::new()
            } else {
                format!(", {}", opts.join(","))
            };
            best = Some((mnt.len(), format!("{} ({} on {}{dax})", f[2], f[0], mnt)));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| "unknown".into())
}

/// The current UTC time as `YYYY-MM-DD HH:MM`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_sane() {
        let d = super::utc_now();
        assert_eq!(d.len(), 16);
        assert!(d.starts_with("20"));
    }
}
