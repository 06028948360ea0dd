//! read, write, pread, pwrite, readv, writev, preadv2, pwritev2: the entry points, their
//! checks, and the calls at the description's offset (`read_pos`, `write_pos`).

use super::check::{
    access_ok, check_read, check_rwf, check_write, iov_before_access, iov_total, iovecs, user_buf,
    verify_area,
};
use super::io::{do_read, do_write, kernel_rw2, SERVED_RWF};
use super::sync::sync_desc;
use super::{Fd, Pass, Route};
use crate::desc::Desc;
use crate::inode::{AppendAt, MAX_RW};
use crate::runtime::engine;
use crate::stats::Call;
use crate::sys::{self, Errno, Res};
use std::sync::Arc;

/// A description reachable through descriptor 0-2 (its offset is the kernel's) of a file
/// no mapping serves yet: the kernel does the whole call, one system call as without flex
/// (not lseek, pread/pwrite, lseek). The size it changes is learnt as another process's
/// change would be.
fn kernel_owns(d: &crate::desc::Desc) -> bool {
    d.is_coherent()
        && !d.explicit
        && d.inode.atomic.get().is_none()
        && !d.inode.is_mapped(false)
        && !d.inode.in_trailer_mode()
}

/// read, readv, preadv(-1): at the description's offset, under its position lock.
/// # Safety
/// As the public entry points.
unsafe fn read_pos(
    d: Arc<Desc>,
    fd: Fd,
    bufs: Res<&[(*mut u8, usize)]>,
    call: Call,
) -> Route<usize> {
    if let Err(e) = check_read(&d) {
        if let Err(ie) = &bufs {
            if call != Call::read && iov_before_access(false) {
                return Route::err(*ie);
            }
        }
        return Route::err(e);
    }
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    let e = engine();
    let bufs = match bufs {
        Ok(b) => b,
        Err(err) => return Route::err(err),
    };
    // Reads count towards adoption: a file read this way is mapped like any other.
    if kernel_owns(&d) && d.inode.count_io() < e.config.adopt_after {
        e.stats.passed(call);
        return Route::Pass(Pass::Coherent);
    }
    let mut pos = d.pos_at(fd);
    if d.is_coherent() {
        // The kernel's offset is the truth (stdio may have moved it).
        let k = match sys::lseek(fd, 0, libc::SEEK_CUR) {
            Ok(k) => k,
            Err(err) => return Route::err(err),
        };
        // SAFETY: forwarded contract.
        let r = unsafe { do_read(e, &d, fd, bufs, k, call) };
        if let Ok(n) = r {
            let _ = sys::lseek(fd, (k + n as u64) as i64, libc::SEEK_SET);
        }
        return Route::Served(r);
    }
    // SAFETY: forwarded contract.
    let r = unsafe { do_read(e, &d, fd, bufs, *pos, call) };
    if let Ok(n) = r {
        *pos += n as u64;
    }
    Route::Served(r)
}

/// # Safety
/// As the public entry points.
unsafe fn write_pos(
    d: Arc<Desc>,
    fd: Fd,
    bufs: Res<&[(*const u8, usize)]>,
    call: Call,
    append: Option<bool>,
) -> Route<usize> {
    if let Err(e) = check_write(&d) {
        if let Err(ie) = &bufs {
            if call != Call::write && iov_before_access(true) {
                return Route::err(*ie);
            }
        }
        return Route::err(e);
    }
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    let e = engine();
    let bufs = match bufs {
        Ok(b) => b,
        Err(err) => return Route::err(err),
    };
    // Writes do not: a file only written through such a descriptor (dd's output, a
    // redirected log) is never mapped, its writes are the kernel's (one system call).
    if kernel_owns(&d) {
        e.stats.passed(call);
        return Route::Pass(Pass::Coherent);
    }
    let mut pos = d.pos();
    let appending = append.unwrap_or(d.append());
    // As do_write decides: off DAX the kernel appends, mapped or not.
    if appending && d.inode.atomic.get().is_none() && d.inode.kernel_places(fd, 0, true, d.explicit)
    {
        // The kernel would place this append anyway (no over-allocation to keep in
        // step): the call as the program made it, one system call as without flex. The
        // file position is the kernel's from here, as after the kernel's own append; it
        // goes there first (a write of nothing, or a failing one, leaves it, and the
        // kernel checks it), unless the last append left it there.
        if !d.pos_is_in_kernel() {
            if let Err(err) = sys::lseek(fd, *pos as i64, libc::SEEK_SET) {
                return Route::err(err);
            }
        }
        d.set_pos_in_kernel(true);
        e.stats.passed(call);
        return Route::Pass(Pass::KernelAppend);
    }
    if !appending {
        d.sync_pos(&mut pos, fd);
    }
    if d.is_coherent() {
        if append.unwrap_or(d.append()) {
            // The kernel descriptor carries O_APPEND again: let the kernel append.
            return Route::Pass(Pass::CoherentAppend);
        }
        let k = match sys::lseek(fd, 0, libc::SEEK_CUR) {
            Ok(k) => k,
            Err(err) => return Route::err(err),
        };
        // SAFETY: forwarded contract.
        let r = unsafe { do_write(e, &d, fd, bufs, k, None, call) };
        if let Ok((_, end)) = r {
            let _ = sys::lseek(fd, end as i64, libc::SEEK_SET);
        }
        return Route::Served(r.map(|(n, _)| n));
    }
    // The kernel checks the file position before it appends (itself, where it holds it).
    if !(appending && d.pos_is_in_kernel()) {
        if let Err(err) = verify_area(*pos as i64, iov_total(bufs)) {
            return Route::err(err);
        }
    }
    // SAFETY: forwarded contract.
    let how = appending.then_some(if d.pos_is_in_kernel() {
        AppendAt::KernelPos
    } else {
        AppendAt::Position(*pos)
    });
    let r = unsafe { do_write(e, &d, fd, bufs, *pos, how, call) };
    Route::Served(r.map(|(n, end)| {
        if end == u64::MAX {
            // The kernel appended at the file position and moved it to the end.
            d.set_pos_in_kernel(true);
        } else if n > 0 || !d.append() {
            *pos = end;
            d.set_pos_in_kernel(false);
        } else {
            d.sync_pos(&mut pos, fd);
        }
        n
    }))
}

/// The range of a positioned call, for a lazy descriptor's count (a negative offset is
/// the kernel's EINVAL: no range).
fn positioned(off: i64, len: usize, write: bool) -> Option<crate::desc::LazyAt> {
    Some(crate::desc::LazyAt {
        off: Some(u64::try_from(off).ok()?),
        len: len as u64,
        write,
    })
}

/// The range of a call at the file position, for a lazy descriptor's count.
fn at_position(len: usize, write: bool) -> Option<crate::desc::LazyAt> {
    Some(crate::desc::LazyAt {
        off: None,
        len: len as u64,
        write,
    })
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn read(fd: Fd, buf: *mut u8, len: usize) -> Route<usize> {
    let d = io_desc_or_pass!(fd, at_position(len, false));
    // SAFETY: forwarded contract.
    let b = user_buf(buf, len, buf);
    // SAFETY: forwarded contract.
    unsafe {
        read_pos(
            d,
            fd,
            b.as_ref().map(|b| &b[..]).map_err(|e| *e),
            Call::read,
        )
    }
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn write(fd: Fd, buf: *const u8, len: usize) -> Route<usize> {
    let d = io_desc_or_pass!(fd, at_position(len, true));
    // SAFETY: forwarded contract.
    let b = user_buf(buf, len, buf);
    // SAFETY: forwarded contract.
    unsafe {
        write_pos(
            d,
            fd,
            b.as_ref().map(|b| &b[..]).map_err(|e| *e),
            Call::write,
            None,
        )
    }
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pread(fd: Fd, buf: *mut u8, len: usize, off: i64) -> Route<usize> {
    let d = io_desc_or_pass!(fd, positioned(off, len, false));
    if off < 0 {
        return Route::err(Errno::INVAL);
    }
    if let Err(e) = check_read(&d) {
        return Route::err(e);
    }
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    if !access_ok(buf, len) {
        return Route::err(Errno::FAULT);
    }
    // SAFETY: forwarded contract.
    Route::Served(unsafe {
        do_read(
            engine(),
            &d,
            fd,
            &[(buf, len.min(MAX_RW))],
            off as u64,
            Call::pread,
        )
    })
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pwrite(fd: Fd, buf: *const u8, len: usize, off: i64) -> Route<usize> {
    let d = io_desc_or_pass!(fd, positioned(off, len, true));
    if off < 0 {
        return Route::err(Errno::INVAL);
    }
    if let Err(e) = check_write(&d) {
        return Route::err(e);
    }
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    if !access_ok(buf, len) {
        return Route::err(Errno::FAULT);
    }
    // The offset is checked even when O_APPEND ignores it.
    if let Err(e) = verify_area(off, len) {
        return Route::err(e);
    }
    // Linux: pwrite on an O_APPEND descriptor appends, whatever the offset.
    // SAFETY: forwarded contract.
    Route::Served(
        unsafe {
            do_write(
                engine(),
                &d,
                fd,
                &[(buf, len.min(MAX_RW))],
                off as u64,
                d.append().then_some(AppendAt::Offset(off as u64)),
                Call::pwrite,
            )
        }
        .map(|r| r.0),
    )
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn readv(fd: Fd, iov: *const libc::iovec, cnt: i32) -> Route<usize> {
    let d = io_desc_or_pass!(fd);
    // SAFETY: forwarded contract.
    let b = iovecs(iov, cnt);
    // SAFETY: forwarded contract.
    unsafe { read_pos(d, fd, b.as_deref().map_err(|e| *e), Call::readv) }
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn writev(fd: Fd, iov: *const libc::iovec, cnt: i32) -> Route<usize> {
    let d = io_desc_or_pass!(fd);
    let b = iovecs(iov, cnt).map(|v| {
        v.into_iter()
            .map(|(p, l)| (p as *const u8, l))
            .collect::<Vec<_>>()
    });
    // SAFETY: forwarded contract.
    unsafe { write_pos(d, fd, b.as_deref().map_err(|e| *e), Call::writev, None) }
}

/// preadv: a negative offset is EINVAL (preadv2's -1, the file position, is not preadv's).
/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn preadv(fd: Fd, iov: *const libc::iovec, cnt: i32, off: i64) -> Route<usize> {
    if off < 0 {
        desc_or_pass!(fd);
        return Route::err(Errno::INVAL);
    }
    // SAFETY: forwarded contract.
    unsafe { preadv2(fd, iov, cnt, off, 0) }
}

/// pwritev: a negative offset is EINVAL, as for [`preadv`].
/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pwritev(fd: Fd, iov: *const libc::iovec, cnt: i32, off: i64) -> Route<usize> {
    if off < 0 {
        desc_or_pass!(fd);
        return Route::err(Errno::INVAL);
    }
    // SAFETY: forwarded contract.
    unsafe { pwritev2(fd, iov, cnt, off, 0) }
}

/// preadv, preadv2 (flags; offset -1 means the file position).
/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn preadv2(
    fd: Fd,
    iov: *const libc::iovec,
    cnt: i32,
    off: i64,
    flags: i32,
) -> Route<usize> {
    let d = io_desc_or_pass!(fd);
    // The kernel's order: offset, descriptor, iovecs, zero total, flags.
    if off < -1 {
        return Route::err(Errno::INVAL);
    }
    if let Err(e) = check_read(&d) {
        if iov_before_access(false) {
            if let Err(ie) = iovecs(iov, cnt) {
                return Route::err(ie);
            }
        }
        return Route::err(e);
    }
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    let b = match iovecs(iov, cnt) {
        Ok(b) => b,
        Err(e) => return Route::err(e),
    };
    let total = iov_total(&b);
    if total == 0 {
        return Route::Served(Ok(0));
    }
    if let Err(e) = check_rwf(off, total) {
        return Route::err(e);
    }
    if flags & !SERVED_RWF != 0 {
        // SAFETY: forwarded contract.
        return Route::Served(unsafe { kernel_rw2(&d, fd, &b, off, flags, false) });
    }
    if off == -1 {
        // SAFETY: forwarded contract.
        return unsafe { read_pos(d, fd, Ok(&b), Call::preadv) };
    }
    // SAFETY: forwarded contract.
    Route::Served(unsafe { do_read(engine(), &d, fd, &b, off as u64, Call::preadv) })
}

/// pwritev, pwritev2 (RWF_APPEND, RWF_NOAPPEND, RWF_DSYNC/RWF_SYNC; offset -1 means the
/// file position).
/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pwritev2(
    fd: Fd,
    iov: *const libc::iovec,
    cnt: i32,
    off: i64,
    flags: i32,
) -> Route<usize> {
    let d = io_desc_or_pass!(fd);
    // The kernel's order: offset, descriptor, iovecs, zero total, flags.
    if off < -1 {
        return Route::err(Errno::INVAL);
    }
    if let Err(e) = check_write(&d) {
        if iov_before_access(true) {
            if let Err(ie) = iovecs(iov, cnt) {
                return Route::err(ie);
            }
        }
        return Route::err(e);
    }
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    let b: Vec<(*const u8, usize)> = match iovecs(iov, cnt) {
        Ok(v) => v.into_iter().map(|(p, l)| (p as *const u8, l)).collect(),
        Err(e) => return Route::err(e),
    };
    let total = iov_total(&b);
    if total == 0 {
        return Route::Served(Ok(0));
    }
    if let Err(e) = check_rwf(off, total) {
        return Route::err(e);
    }
    if flags & !SERVED_RWF != 0 {
        let bm: Vec<(*mut u8, usize)> = b.iter().map(|&(p, l)| (p as *mut u8, l)).collect();
        // SAFETY: forwarded contract (the kernel only reads these buffers).
        return Route::Served(unsafe { kernel_rw2(&d, fd, &bm, off, flags, true) });
    }
    let append = (flags & libc::RWF_APPEND != 0).then_some(true);
    let r = if off == -1 {
        // SAFETY: forwarded contract.
        match unsafe { write_pos(d.clone(), fd, Ok(&b), Call::pwritev, append) } {
            Route::Served(r) => r,
            pass => return pass,
        }
    } else {
        // SAFETY: forwarded contract.
        unsafe {
            do_write(
                engine(),
                &d,
                fd,
                &b,
                off as u64,
                append
                    .unwrap_or(d.append())
                    .then_some(AppendAt::Offset(off as u64)),
                Call::pwritev,
            )
        }
        .map(|r| r.0)
    };
    if r.is_ok() && flags & (libc::RWF_DSYNC | libc::RWF_SYNC) != 0 {
        // Per-write O_DSYNC/O_SYNC: durable on return (in atomic mode: a commit).
        if let Err(err) = sync_desc(&d, fd, flags & libc::RWF_SYNC == 0) {
            return Route::err(err);
        }
    }
    Route::Served(r)
}
