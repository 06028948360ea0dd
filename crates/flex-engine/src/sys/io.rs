//! Data transfer: read, write and their positioned, vectored and appending forms, and
//! lseek. Buffers are the application's raw pointers: the kernel judges them (EFAULT).

use super::fd::fcntl_int;
use super::{ret, Res};
use rustix::fd::RawFd;

/// pread64 into an application buffer (may be invalid: the kernel answers EFAULT).
#[inline]
/// # Safety
/// `buf` must be valid for `len` bytes, or invalid so that the kernel answers EFAULT; it
/// must never point into memory the caller does not own.
pub unsafe fn pread(fd: RawFd, buf: *mut u8, len: usize, off: u64) -> Res<usize> {
    // SAFETY: a raw system call; the kernel validates the buffer and reports EFAULT.
    ret(unsafe { libc::syscall(libc::SYS_pread64, fd, buf, len, off as i64) })
}

/// pwrite64 from an application buffer (may be invalid: the kernel answers EFAULT).
#[inline]
/// # Safety
/// `buf` must be valid for `len` bytes, or invalid so that the kernel answers EFAULT; it
/// must never point into memory the caller does not own.
pub unsafe fn pwrite(fd: RawFd, buf: *const u8, len: usize, off: u64) -> Res<usize> {
    // SAFETY: a raw system call; the kernel validates the buffer and reports EFAULT.
    ret(unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf, len, off as i64) })
}

/// write(2) from an application buffer, at the kernel's file offset.
#[inline]
/// # Safety
/// `buf` must be valid for `len` bytes, or invalid so that the kernel answers EFAULT; it
/// must never point into memory the caller does not own.
pub unsafe fn write(fd: RawFd, buf: *const u8, len: usize) -> Res<usize> {
    // SAFETY: a raw system call; the kernel validates the buffer and reports EFAULT.
    ret(unsafe { libc::syscall(libc::SYS_write, fd, buf, len) })
}

/// read(2) into an application buffer, at the kernel's file offset.
#[inline]
/// # Safety
/// `buf` must be valid for `len` bytes, or invalid so that the kernel answers EFAULT; it
/// must never point into memory the caller does not own.
pub unsafe fn read(fd: RawFd, buf: *mut u8, len: usize) -> Res<usize> {
    // SAFETY: a raw system call; the kernel validates the buffer and reports EFAULT.
    ret(unsafe { libc::syscall(libc::SYS_read, fd, buf, len) })
}

/// preadv(2) into application buffers (one buffer: pread).
///
/// # Safety
/// As [`pread`], for every buffer.
pub unsafe fn preadv(fd: RawFd, bufs: &[(*mut u8, usize)], off: u64) -> Res<usize> {
    if let [(p, l)] = bufs {
        // SAFETY: forwarded contract.
        return unsafe { pread(fd, *p, *l, off) };
    }
    // SAFETY: forwarded contract.
    unsafe {
        vector_io(
            libc::SYS_preadv,
            fd,
            bufs.iter().map(|&(p, l)| (p as *const u8, l)),
            off as i64,
            0,
        )
    }
}

/// pwritev(2) from application buffers (one buffer: pwrite).
///
/// # Safety
/// As [`pwrite`], for every buffer.
pub unsafe fn pwritev(fd: RawFd, bufs: &[(*const u8, usize)], off: u64) -> Res<usize> {
    if let [(p, l)] = bufs {
        // SAFETY: forwarded contract.
        return unsafe { pwrite(fd, *p, *l, off) };
    }
    // SAFETY: forwarded contract.
    unsafe { vector_io(libc::SYS_pwritev, fd, bufs.iter().copied(), off as i64, 0) }
}

/// One vectored call (preadv, pwritev, preadv2, pwritev2) on an iovec array built from
/// `bufs`; `flags` is the sixth argument, which only the *v2 calls read.
///
/// # Safety
/// Every buffer valid for its length, or invalid (the kernel answers EFAULT).
unsafe fn vector_io(
    nr: libc::c_long,
    fd: RawFd,
    bufs: impl Iterator<Item = (*const u8, usize)>,
    off: i64,
    flags: i32,
) -> Res<usize> {
    let iov: Vec<libc::iovec> = bufs
        .map(|(p, l)| libc::iovec {
            iov_base: p as *mut _,
            iov_len: l,
        })
        .collect();
    // SAFETY: a raw system call on an iovec array we own; the kernel checks the buffers.
    // On x86_64 the low offset word carries all 64 bits (-1 in both words for -1); the
    // high word is ignored.
    ret(unsafe {
        libc::syscall(
            nr,
            fd,
            iov.as_ptr(),
            iov.len() as libc::c_int,
            off,
            off >> 32,
            flags,
        )
    })
}

/// preadv2(2)/pwritev2(2) as the application asked (offset -1: the file position).
///
/// # Safety
/// Every buffer valid for its length, or invalid (the kernel answers EFAULT); a read's
/// buffers must be writable.
pub unsafe fn rw2(
    fd: RawFd,
    bufs: &[(*mut u8, usize)],
    off: i64,
    flags: i32,
    write: bool,
) -> Res<usize> {
    let nr = if write {
        libc::SYS_pwritev2
    } else {
        libc::SYS_preadv2
    };
    // SAFETY: forwarded contract.
    unsafe {
        vector_io(
            nr,
            fd,
            bufs.iter().map(|&(p, l)| (p as *const u8, l)),
            off,
            flags,
        )
    }
}

pub fn lseek(fd: RawFd, off: i64, whence: i32) -> Res<u64> {
    // SAFETY: a raw system call with scalar arguments.
    ret(unsafe { libc::syscall(libc::SYS_lseek, fd, off, whence) }).map(|v| v as u64)
}

/// Write `bufs` at the end of file, atomically with respect to every other writer of the
/// file (in any process), as an O_APPEND write: the kernel picks the offset under its
/// inode lock. Returns the count and the offset just past the bytes (the description's
/// new file position). `RWF_APPEND` also covers a descriptor without O_APPEND (an
/// `RWF_APPEND` pwritev2 of the application).
///
/// # Safety
/// Every buffer valid for its length, or invalid (the kernel answers EFAULT).
pub unsafe fn append(fd: RawFd, bufs: &[(*const u8, usize)]) -> Res<(usize, u64)> {
    // SAFETY: forwarded contract.
    let n = unsafe { append_at(fd, bufs, -1) }?;
    let end = lseek(fd, 0, libc::SEEK_CUR)?;
    Ok((n, end))
}

/// An append (`RWF_APPEND`) with the kernel's checks on `off` (-1: the file position,
/// which the write then moves to the end, as write(2); otherwise as pwrite(2), which
/// leaves it). Returns the count.
///
/// # Safety
/// Every buffer valid for its length, or invalid (the kernel answers EFAULT).
pub unsafe fn append_at(fd: RawFd, bufs: &[(*const u8, usize)], off: i64) -> Res<usize> {
    let bufs = bufs.iter().copied();
    // SAFETY: forwarded contract.
    unsafe { vector_io(libc::SYS_pwritev2, fd, bufs, off, libc::RWF_APPEND) }
}

/// pwrite at exactly `off`, also on an O_APPEND descriptor (where Linux's pwrite appends):
/// the flag is lifted for the call. Only for descriptions this process alone uses (flex's
/// own metadata writes under the size lock, e.g. the trailer of a leased file).
///
/// # Safety
/// As [`pwrite`].
pub unsafe fn pwrite_exact(fd: RawFd, buf: *const u8, len: usize, off: u64) -> Res<usize> {
    let fl = fcntl_int(fd, libc::F_GETFL, 0)?;
    if fl & libc::O_APPEND == 0 {
        // SAFETY: forwarded contract.
        return unsafe { pwrite(fd, buf, len, off) };
    }
    fcntl_int(fd, libc::F_SETFL, (fl & !libc::O_APPEND) as libc::c_long)?;
    // SAFETY: forwarded contract.
    let r = unsafe { pwrite(fd, buf, len, off) };
    let _ = fcntl_int(fd, libc::F_SETFL, fl as libc::c_long);
    r
}

/// readv or writev (`write`) of `fd` with a NULL iovec and a count of -1: the kernel
/// rejects it before touching memory; which error (EINVAL for the count, EBADF for the
/// descriptor's mode) tells its order of checks.
pub fn vector_io_probe(fd: RawFd, write: bool) -> Res<usize> {
    let nr = if write {
        libc::SYS_writev
    } else {
        libc::SYS_readv
    };
    // SAFETY: an invalid count: the kernel rejects the call before reading the iovec.
    ret(unsafe { libc::syscall(nr, fd, core::ptr::null::<libc::iovec>(), -1i32) })
}
