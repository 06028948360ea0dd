//! The data paths under the read and write calls: through the mapping, the kernel or
//! the atomic state (`do_read`, `do_write`), the choice to map (`mapped`), and
//! preadv2/pwritev2 flags only the kernel serves (`kernel_rw2`).

use super::check::verify_area;
use super::size::refresh_from_kernel;
use super::{Fd, Pass};
use crate::config::LogLevel;
use crate::desc::Desc;
use crate::inode::{AppendAt, FAST_LIMIT, MAX_RW};
use crate::log::flex_log;
use crate::runtime::{engine, Engine};
use crate::stats::Call;
use crate::sys::{self, Res};
use std::sync::atomic::Ordering::*;

/// RWF_* flags the engine serves itself; any other flag (RWF_NOWAIT, RWF_NOAPPEND,
/// RWF_ATOMIC, RWF_DONTCACHE, unknown bits) sends the whole call to the kernel, whose
/// answer depends on its version and the file system (see [`kernel_rw2`]).
pub(super) const SERVED_RWF: i32 =
    libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC | libc::RWF_APPEND;

/// preadv2/pwritev2 with flags flex does not serve: the kernel does the call on the
/// exact-size file from flex's offset (the kernel descriptor carries O_APPEND itself);
/// then flex takes the offset and size back. In atomic mode such a call is a commit point
/// (README, "Failure-atomic mode").
///
/// # Safety
/// As the public entry points.
pub(super) unsafe fn kernel_rw2(
    d: &Desc,
    fd: Fd,
    bufs: &[(*mut u8, usize)],
    off: i64,
    flags: i32,
    write: bool,
) -> Res<usize> {
    let e = engine();
    e.stats
        .passed(if write { Call::pwritev } else { Call::preadv });
    e.stats.fell_back(Pass::Rwf2Flag);
    crate::atomic::commit_for_kernel(&d.inode);
    d.inode.trim(fd)?;
    let mut pos = d.pos_at(fd);
    if off == -1 {
        // At the file position: the kernel's own (it alone knows where the call lands,
        // e.g. overlayfs appends even under RWF_NOAPPEND), moved there first, read after.
        sys::lseek(fd, *pos as i64, libc::SEEK_SET)?;
    }
    // SAFETY: forwarded contract (the kernel checks the buffers).
    let r = unsafe { sys::rw2(fd, bufs, off, flags, write) };
    // Even a failed write can move the size.
    let size = write.then(|| refresh_from_kernel(d, fd));
    if off == -1 {
        *pos = sys::lseek(fd, 0, libc::SEEK_CUR)?;
    }
    let n = r?;
    size.transpose()?;
    Ok(n)
}

/// Decide whether this IO goes through the mapping (true) or the kernel (false).
fn mapped(e: &Engine, d: &Desc, fd: Fd, write: bool) -> bool {
    let i = &d.inode;
    if i.nomap() || e.exiting.load(Relaxed) {
        return false;
    }
    if i.is_mapped(write) {
        return true;
    }
    if !d.explicit && i.count_io() < e.config.adopt_after {
        return false;
    }
    // A read-write description maps writable at once: no remap at its first write.
    match i.map_for(fd, write || d.writable()) {
        Ok(()) => true,
        Err(err) => {
            flex_log!(
                LogLevel::Info,
                "mmap failed ({err}): kernel path for {}",
                String::from_utf8_lossy(&i.path)
            );
            e.stats.fell_back(Pass::MmapFailed);
            i.set_nomap();
            false
        }
    }
}

/// # Safety
/// As the public entry points.
pub(super) unsafe fn do_read(
    e: &Engine,
    d: &Desc,
    fd: Fd,
    bufs: &[(*mut u8, usize)],
    off: u64,
    call: Call,
) -> Res<usize> {
    let total: usize = bufs.iter().fold(0usize, |a, b| a.saturating_add(b.1));
    if total == 0 {
        return Ok(0);
    }
    if let Some(a) = d.inode.atomic.get() {
        // The kernel refuses a range past the largest offset (elsewhere it answers this).
        verify_area(off as i64, total.min(MAX_RW))?;
        e.stats.served(call);
        // SAFETY: forwarded contract.
        return unsafe { a.read(&d.inode, fd, bufs, off) };
    }
    // A read at or past the end serves nothing from a mapping (SQLite probes past its
    // journal's end): the kernel answers it, and it maps nothing.
    let past_end = off < FAST_LIMIT && off >= d.inode.lsize() && !d.inode.is_mapped(false);
    if off >= FAST_LIMIT || past_end || !mapped(e, d, fd, false) {
        e.stats.passed(call);
        // SAFETY: forwarded contract.
        let r = unsafe { sys::preadv(fd, bufs, off) };
        if past_end && matches!(r, Ok(n) if n > 0) {
            // Another process grew the file: take its size, and the read counts towards
            // adoption (a reader following a growing file gets mapped).
            let _ = d.inode.adopt_kernel_size(fd);
            d.inode.count_io();
        }
        return r;
    }
    e.stats.served(call);
    let mut done = 0usize;
    for &(p, l) in bufs {
        let l = l.min(MAX_RW - done);
        // SAFETY: forwarded contract.
        let n = match unsafe { d.inode.read_at(fd, p, l, off + done as u64) } {
            Ok(n) => n,
            Err(err) if done == 0 => return Err(err),
            Err(_) => break,
        };
        done += n;
        if n < l || done >= MAX_RW {
            break;
        }
    }
    Ok(done)
}

/// # Safety
/// As the public entry points.
/// `how`: an append, and how the kernel places it if it does (see [`AppendAt`]). A
/// returned end of `u64::MAX`: the kernel appended at the file position, which now holds
/// the description's position (see `Desc::pos_at`).
pub(super) unsafe fn do_write(
    e: &Engine,
    d: &Desc,
    fd: Fd,
    bufs: &[(*const u8, usize)],
    off: u64,
    how: Option<AppendAt>,
    call: Call,
) -> Res<(usize, u64)> {
    let append = how.is_some();
    let total: usize = bufs.iter().fold(0usize, |a, b| a.saturating_add(b.1));
    if total == 0 {
        return Ok((0, off));
    }
    if let Some(a) = d.inode.atomic.get() {
        e.stats.served(call);
        // SAFETY: forwarded contract.
        let r = unsafe { a.write(&d.inode, bufs, off, append) }?;
        if d.sync_writes().is_some() {
            // O_SYNC/O_DSYNC: each write is its own transaction, durable on return.
            a.commit(&d.inode)?;
        }
        return Ok(r);
    }
    let end = off.saturating_add(total as u64);
    // A file only ever extended (a new journal, a log) is never mapped, and such writes do
    // not count towards adoption (FLEX_ADOPT_AFTER counts calls a mapping would serve).
    // Inode::kernel_places's two halves, with the mapping between them (each asked once).
    let unmapped_extend = !d.explicit && d.inode.kernel_extends_unmapped(fd, end, append);
    if unmapped_extend || !mapped(e, d, fd, true) || d.inode.kernel_extends(end, append) {
        e.stats.passed(call);
        // SAFETY: forwarded contract (the kernel honours O_SYNC/O_DSYNC itself).
        return unsafe { d.inode.kernel_write(fd, bufs, off, how) };
    }
    e.stats.served(call);
    // SAFETY: forwarded contract.
    let r = unsafe { d.inode.write_at(fd, bufs, off, how, false) }?;
    if let Some(data_only) = d.sync_writes() {
        // O_SYNC/O_DSYNC: durable before the write returns, as the kernel's would be.
        d.inode.sync(fd, data_only)?;
    }
    Ok(r)
}
