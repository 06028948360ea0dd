//! Calls that set a file's size: ftruncate, truncate, fallocate, posix_fallocate, and
//! taking the size back after the kernel changed it.

use super::handoff::kernel_handoff;
use super::{Fd, Pass, Route};
use crate::desc::Desc;
use crate::runtime::{engine, engine_if_started};
use crate::stats::Call;
use crate::sys::{self, Errno, Res};
use std::ffi::CStr;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

pub fn ftruncate(fd: Fd, len: i64) -> Route<()> {
    let d = desc_or_pass!(fd, moves_lazy: true);
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    engine().stats.served(Call::ftruncate);
    if len < 0 {
        return Route::err(Errno::INVAL);
    }
    if !d.writable() {
        return Route::err(Errno::INVAL);
    }
    if let Some(a) = d.inode.atomic.get() {
        return Route::Served(a.truncate(&d.inode, len as u64));
    }
    Route::Served(
        d.inode
            .set_len(Some(fd), len as u64, || sys::ftruncate(fd, len as u64)),
    )
}

/// truncate(path): if this process has the file over-allocated, trim it first.
pub fn truncate(path: &CStr, len: i64) -> Route<()> {
    let Some(e) = engine_if_started() else {
        return Route::Pass(Pass::NotManaged);
    };
    // Open descriptions cache the size even outside trailer mode: they must see the new one.
    if e.trailer_files.load(Relaxed) <= 0 && e.table.is_empty() {
        return Route::Pass(Pass::NotManaged);
    }
    // A path the kernel cannot stat, or a file flex does not know: the kernel's.
    let Ok(st) = sys::fstatat(libc::AT_FDCWD, path, 0) else {
        return Route::Pass(Pass::NotManaged);
    };
    let Some(inode) = e.lookup(st.st_dev, st.st_ino) else {
        return Route::Pass(Pass::NotManaged);
    };
    let fd = e
        .table
        .entries()
        .into_iter()
        .find(|(_, d)| Arc::ptr_eq(&d.inode, &inode))
        .map(|(fd, _)| fd);
    e.stats.served(Call::truncate);
    if len < 0 {
        return Route::err(Errno::INVAL);
    }
    if let Some(a) = inode.atomic.get() {
        // A file in atomic mode here: the truncation joins the open transaction (the
        // kernel's permission check first: the path must be writable by us).
        if let Err(err) = sys::check_writable(libc::AT_FDCWD, path) {
            return Route::err(err);
        }
        return Route::Served(a.truncate(&inode, len as u64));
    }
    Route::Served(inode.set_len(fd, len as u64, || sys::truncate(path, len)))
}

/// fallocate and posix_fallocate: leave trailer mode, let the kernel allocate, re-read size.
pub fn fallocate(fd: Fd, mode: i32, off: i64, len: i64) -> Route<()> {
    let d = desc_or_pass!(fd, moves_lazy: true);
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    engine().stats.served(Call::fallocate);
    if let Some(a) = d.inode.atomic.get() {
        return Route::Served(atomic_fallocate(&d, &a, fd, mode, off, len));
    }
    // A read-only description has a read-only kernel descriptor: the kernel refuses in its
    // own order (EINVAL for the range, EOPNOTSUPP for the mode, then EBADF).
    if d.writable() {
        if let Err(e) = d.inode.trim(fd) {
            return Route::err(e);
        }
    }
    if let Err(err) = sys::fallocate(fd, mode, off, len) {
        return Route::err(err);
    }
    Route::Served(d.inode.refresh(fd).map(|_| ()))
}

/// posix_fallocate: served as `Ok(the error number)`, as the C call returns it (0 on
/// success; it sets no errno). `emulate` is the C library's own, which writes the bytes
/// where the file system has no fallocate (FUSE, NFS...): the file is handed to the kernel
/// around it.
pub fn posix_fallocate(fd: Fd, off: i64, len: i64, emulate: impl FnOnce() -> i32) -> Route<i32> {
    desc_or_pass!(fd, moves_lazy: true);
    if off < 0 || len <= 0 {
        return Route::Served(Ok(libc::EINVAL));
    }
    let r = match fallocate(fd, 0, off, len) {
        Route::Served(r) => r,
        Route::Pass(p) => return Route::Pass(p),
    };
    Route::Served(Ok(match r {
        Ok(()) => 0,
        Err(Errno::OPNOTSUPP) => {
            let after = kernel_handoff(fd, false, Call::fallocate);
            let r = emulate();
            if let Some(after) = after {
                after();
            }
            r
        }
        Err(e) => e.raw_os_error(),
    }))
}

/// fallocate of a file in atomic mode. Allocation (mode 0, KEEP_SIZE) changes no byte: the
/// kernel allocates without growing, and the growth joins the open transaction. The modes
/// that change bytes (punch, zero, collapse, insert) are a commit point: commit, then the
/// kernel (README, "Failure-atomic mode").
fn atomic_fallocate(
    d: &Desc,
    a: &crate::atomic::Attached,
    fd: Fd,
    mode: i32,
    off: i64,
    len: i64,
) -> Res<()> {
    if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
        sys::fallocate(fd, mode | libc::FALLOC_FL_KEEP_SIZE, off, len)?;
        let end = (off as u64).saturating_add(len as u64);
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > a.size() {
            a.truncate(&d.inode, end)?;
        }
        return Ok(());
    }
    crate::atomic::commit_for_kernel(&d.inode);
    let r = sys::fallocate(fd, mode, off, len);
    let _ = refresh_from_kernel(d, fd);
    r
}

/// The kernel changed the file behind flex: take its size, in atomic mode into the
/// atomic state too (a commit and checkpoint emptied its log first).
pub(super) fn refresh_from_kernel(d: &Desc, fd: Fd) -> Res<u64> {
    let size = d.inode.refresh(fd)?;
    if let Some(a) = d.inode.atomic.get() {
        a.adopt_size(size);
    }
    Ok(size)
}
