//! The resolved configuration of a run: `flexio bench`'s options with the defaults of
//! the quick or the full run filled in.

use anyhow::bail;

use crate::jobs::ClientSizes;
use crate::BenchArgs;

/// The resolved configuration of a run.
pub(crate) struct Config {
    pub(crate) reps: u32,
    pub(crate) seconds: f64,
    pub(crate) file_size: u64,
    pub(crate) small_count: usize,
    pub(crate) append_cap: u64,
    pub(crate) sizes: Vec<usize>,
    pub(crate) threads: Vec<usize>,
    pub(crate) clients: ClientSizes,
}

impl Config {
    pub(crate) fn new(a: &BenchArgs) -> anyhow::Result<Config> {
        let q = a.quick;
        let c = Config {
            reps: a.reps.unwrap_or(if q { 3 } else { 5 }),
            seconds: a.seconds.unwrap_or(if q { 0.25 } else { 1.0 }),
            file_size: a.file_size.unwrap_or(if q { 256 << 20 } else { 1 << 30 }),
            small_count: a.small_files.unwrap_or(10_000),
            append_cap: a.append_cap,
            sizes: a
                .sizes
                .clone()
                .unwrap_or(vec![512, 4096, 65536])
                .into_iter()
                .map(|s| s as usize)
                .collect(),
            threads: a.threads.clone().unwrap_or(vec![1, 2]),
            clients: if q {
                ClientSizes {
                    fio_ms: 500,
                    db_num: 100_000,
                    sqlite_txns: 200,
                    sqlite_selects: 2000,
                    redis_requests: 20_000,
                    fio_thread: a.fio_thread,
                    mp_sqlite_txns: 100,
                }
            } else {
                ClientSizes {
                    fio_ms: 3000,
                    db_num: 500_000,
                    sqlite_txns: 1000,
                    sqlite_selects: 20_000,
                    redis_requests: 100_000,
                    fio_thread: a.fio_thread,
                    mp_sqlite_txns: 500,
                }
            },
        };
        if c.reps == 0
            || c.seconds.is_nan()
            || c.seconds <= 0.0
            || c.threads.is_empty()
            || c.threads.contains(&0)
        {
            bail!("--reps, --seconds and --threads must be positive");
        }
        if c.sizes.iter().any(|&s| s == 0 || s as u64 > c.file_size) {
            bail!("every --sizes entry must be between 1 and --file-size");
        }
        Ok(c)
    }
}
