//! Argument checks as the kernel makes them, and in its order: the offset range
//! (rw_verify_area), user buffers (access_ok), the iovec array copied in, the access mode,
//! and the probe for whether this kernel checks iovecs before the access mode.

use crate::desc::Desc;
use crate::fault;
use crate::inode::MAX_RW;
use crate::sys::{self, Errno, Res};
use std::sync::atomic::Ordering::*;

const IOV_MAX: i32 = 1024;

pub(super) fn check_rwf(off: i64, total: usize) -> Res<()> {
    if off >= 0 {
        verify_area(off, total)?;
    }
    Ok(())
}

/// Does this kernel check a vectored call's iovec array (EINVAL, EFAULT) before the
/// descriptor's access mode (EBADF)? Linux 6.1 does, later kernels do not. Asked once, on
/// a pipe end opened the wrong way round.
pub(super) fn iov_before_access(write: bool) -> bool {
    use std::sync::atomic::AtomicU8;
    static ORDER: [AtomicU8; 2] = [AtomicU8::new(0), AtomicU8::new(0)];
    let slot = &ORDER[write as usize];
    match slot.load(Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let Ok((r, w)) = rustix::pipe::pipe() else {
        return false;
    };
    use rustix::fd::AsRawFd;
    // The wrong end of the pipe for the call: EBADF from the mode check.
    let fd = if write { r.as_raw_fd() } else { w.as_raw_fd() };
    // Another thread of the program may close a descriptor number it does not own (ours)
    // and open a file that takes it: only an answer about our own pipe counts.
    let ours = || sys::fstat(fd).map(|st| st.st_ino).ok();
    let before = ours();
    let errno = sys::vector_io_probe(fd, write)
        .err()
        .map_or(0, |e| e.raw_os_error());
    if before.is_none() || ours() != before || (errno != libc::EINVAL && errno != libc::EBADF) {
        return false; // not known: the newer kernels' order, asked again next time
    }
    let first = errno == libc::EINVAL;
    slot.store(if first { 1 } else { 2 }, Relaxed);
    first
}

/// The kernel's rw_verify_area: offset + count must not pass the largest offset (EINVAL).
pub(super) fn verify_area(off: i64, count: usize) -> Res<()> {
    if (off as u64).saturating_add(count as u64) > i64::MAX as u64 {
        return Err(Errno::INVAL);
    }
    Ok(())
}

pub(super) fn iov_total<T>(b: &[(T, usize)]) -> usize {
    b.iter()
        .fold(0usize, |a, x| a.saturating_add(x.1))
        .min(MAX_RW)
}

/// Copy an application iovec array into our memory; EFAULT/EINVAL as the kernel.
pub(super) fn iovecs(iov: *const libc::iovec, cnt: i32) -> Res<Vec<(*mut u8, usize)>> {
    if !(0..=IOV_MAX).contains(&cnt) {
        return Err(Errno::INVAL);
    }
    let mut v: Vec<libc::iovec> = Vec::with_capacity(cnt as usize);
    let bytes = cnt as usize * core::mem::size_of::<libc::iovec>();
    // SAFETY: `v` has capacity for `cnt` iovecs; the source is the application's pointer,
    // and a bad one faults inside the guarded copy instead of crashing.
    let rem = unsafe { fault::copy(v.as_mut_ptr().cast(), iov.cast(), bytes) };
    if rem != 0 {
        return Err(Errno::FAULT);
    }
    // SAFETY: all `cnt` elements were just initialised by the copy.
    unsafe { v.set_len(cnt as usize) };
    // As the kernel's import_iovec: a negative length anywhere is EINVAL, then any buffer
    // outside user space (zero-length ones included) is EFAULT. The total is clamped to
    // MAX_RW by the data paths, never an error.
    if v.iter().any(|i| i.iov_len > isize::MAX as usize) {
        return Err(Errno::INVAL);
    }
    if !v
        .iter()
        .all(|i| access_ok(i.iov_base as *const u8, i.iov_len))
    {
        return Err(Errno::FAULT);
    }
    Ok(v.into_iter()
        .map(|i| (i.iov_base.cast::<u8>(), i.iov_len))
        .collect())
}

/// The kernel's access_ok(): the buffer lies in the user half of the address space (also
/// for zero lengths). The kernel's bound is TASK_SIZE (47 or 56 bits); we check the sign
/// bit, which catches kernel pointers; other non-canonical ones fault in the guarded copy.
pub(super) fn access_ok(p: *const u8, len: usize) -> bool {
    (p as usize)
        .checked_add(len)
        .is_some_and(|end| end <= isize::MAX as usize)
}

/// One application buffer, checked as the kernel does before any IO.
/// An array, not a Vec: read and write allocate nothing.
pub(super) fn user_buf<P>(p: *const u8, len: usize, keep: P) -> Res<[(P, usize); 1]> {
    if access_ok(p, len) {
        Ok([(keep, len.min(MAX_RW))])
    } else {
        Err(Errno::FAULT)
    }
}

pub(super) fn check_read(d: &Desc) -> Res<()> {
    if d.readable() {
        Ok(())
    } else {
        Err(Errno::BADF)
    }
}
pub(super) fn check_write(d: &Desc) -> Res<()> {
    if d.writable() {
        Ok(())
    } else {
        Err(Errno::BADF)
    }
}
