//! stat, fstat, statx: the logical size in place of the kernel's.

use super::{desc, Fd};
use crate::runtime::{engine, engine_if_started};
use crate::stats::Call;
use std::sync::atomic::Ordering::*;

/// After a successful fstat/stat/statx: report the logical size of over-allocated files.
pub fn fix_stat(dev: u64, ino: u64, size: &mut i64) {
    let Some(e) = engine_if_started() else { return };
    if e.trailer_files.load(Relaxed) <= 0 && e.atomic_files.load(Relaxed) <= 0 {
        return;
    }
    if let Some(i) = e.lookup(dev, ino) {
        if let Some(a) = i.atomic.get() {
            // Atomic mode: this process's view, its uncommitted operations included.
            *size = a.size() as i64;
            e.stats.served(Call::stat);
            return;
        }
        let settled = i.settled_size(*size as u64) as i64;
        if settled != *size {
            *size = settled;
            e.stats.served(Call::stat);
        }
    }
}

/// fstat on a managed descriptor: the kernel's answer with the logical size. Also keeps
/// the cached size of exact files in step with the kernel.
pub fn fstat_fix(fd: Fd, dev: u64, ino: u64, size: &mut i64) {
    let Ok(d) = desc(fd) else {
        // A lazy descriptor: the kernel's answer is exact, and tells its end.
        if let Some(e) = crate::runtime::engine_if_started() {
            e.table.lazy_saw_size(fd, *size as u64);
        }
        return;
    };
    if d.is_demoted() || d.inode.dev != dev || d.inode.ino != ino {
        return;
    }
    engine().stats.served(Call::fstat);
    if let Some(a) = d.inode.atomic.get() {
        *size = a.size() as i64;
        return;
    }
    if d.inode.in_trailer_mode() {
        *size = d.inode.lsize() as i64;
    } else {
        // Not the size just read: a writer of this process may have extended (or, on DAX,
        // over-allocated) the file since; report the size adopted under the size lock.
        if let Ok(l) = d.inode.adopt_seen_size(fd, *size as u64) {
            *size = l as i64;
        }
    }
}
