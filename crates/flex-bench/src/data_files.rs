//! The files the built-in cells read and write, made before anything is timed.

use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::jobs::{Job, JobKind, Matrix};
use crate::worker;

/// Creates the data file and the small files the selected jobs need (not timed).
pub(crate) fn prepare_files(jobs: &[Job], m: &Matrix) -> anyhow::Result<()> {
    let uses = |p: &str| {
        jobs.iter().any(|j| match &j.kind {
            JobKind::Worker(a) => a.first().is_some_and(|w| w == p),
            JobKind::Fio(_) => p == "data",
            _ => false,
        })
    };
    if uses("pread") || uses("pwrite") || uses("memcpy") || uses("data") {
        let t = Instant::now();
        fill_file(&m.data_file, m.file_size)?;
        eprintln!(
            "created {} ({} MiB) in {:.1} s",
            m.data_file.display(),
            m.file_size >> 20,
            t.elapsed().as_secs_f64()
        );
    }
    if uses("smallfiles") {
        std::fs::create_dir_all(&m.small_dir)?;
        let mut buf = vec![0u8; 4096];
        for i in 0..m.small_count {
            fill_pattern(&mut buf, i as u64);
            std::fs::write(worker::small_file_path(&m.small_dir, i), &buf)?;
        }
    }
    Ok(())
}

fn fill_pattern(buf: &mut [u8], seed: u64) {
    fastrand::Rng::with_seed(seed).fill(buf);
}

/// Writes `size` bytes of non-zero pseudo-random data (no holes: sparse would be unfair).
fn fill_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        fill_pattern(&mut buf, i);
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
        i += 1;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(())
}
