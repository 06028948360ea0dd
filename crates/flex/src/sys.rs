//! Raw system calls. The engine never calls the libc wrappers that libflex.so
//! intercepts (that would call itself): it uses rustix, or `libc::syscall` where the
//! buffer is a raw pointer owned by the application (its validity is the kernel's to judge).

use rustix::fd::{BorrowedFd, RawFd};
pub use rustix::io::Errno;

pub type Res<T> = Result<T, Errno>;

/// Borrow a raw descriptor for a rustix call.
#[inline]
pub fn bfd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every caller passes a descriptor that is open for the duration of the call
    // (an application descriptor the application is using in the call being served). If the
    // application closes it concurrently, the kernel answers EBADF: no memory is at stake.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

#[inline]
fn ret(r: libc::c_long) -> Res<usize> {
    if r < 0 {
        // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
        Err(Errno::from_raw_os_error(unsafe {
            *libc::__errno_location()
        }))
    } else {
        Ok(r as usize)
    }
}

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

pub fn fstat(fd: RawFd) -> Res<rustix::fs::Stat> {
    rustix::fs::fstat(bfd(fd))
}

pub fn ftruncate(fd: RawFd, len: u64) -> Res<()> {
    rustix::fs::ftruncate(bfd(fd), len)
}

pub fn fsync(fd: RawFd) -> Res<()> {
    rustix::fs::fsync(bfd(fd))
}

pub fn fdatasync(fd: RawFd) -> Res<()> {
    rustix::fs::fdatasync(bfd(fd))
}

/// Reserve blocks beyond EOF without changing the size (`FALLOC_FL_KEEP_SIZE`).
pub fn reserve(fd: RawFd, off: u64, len: u64) -> Res<()> {
    rustix::fs::fallocate(bfd(fd), rustix::fs::FallocateFlags::KEEP_SIZE, off, len)
}

/// fallocate with the application's own (signed) arguments: the kernel judges them.
pub fn fallocate(fd: RawFd, mode: i32, off: i64, len: i64) -> Res<()> {
    // SAFETY: a raw system call with scalar arguments.
    ret(unsafe { libc::syscall(libc::SYS_fallocate, fd, mode, off, len) }).map(|_| ())
}

/// The kernel's permission check for writing `path` (effective ids, as open and truncate).
pub fn check_writable(dirfd: RawFd, path: &core::ffi::CStr) -> Res<()> {
    // SAFETY: a raw system call with a valid path string.
    ret(unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            dirfd,
            path.as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS,
        )
    })
    .map(|_| ())
}

pub fn close(fd: RawFd) -> Res<()> {
    // SAFETY: a raw system call with a scalar argument.
    ret(unsafe { libc::syscall(libc::SYS_close, fd) }).map(|_| ())
}

/// close_range of `[first, last]` with `flags`.
pub fn close_range(first: u32, last: u32, flags: i32) -> Res<()> {
    // SAFETY: a raw system call with scalar arguments.
    ret(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_long,
            last as libc::c_long,
            flags as libc::c_long,
        )
    })
    .map(|_| ())
}

/// fcntl with an integer argument.
pub fn fcntl_int(fd: RawFd, cmd: i32, arg: libc::c_long) -> Res<i32> {
    // SAFETY: a raw system call; integer commands take no pointer.
    ret(unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) }).map(|v| v as i32)
}

/// Try an open-file-description lock on one byte (non-blocking). `write` picks F_WRLCK.
pub fn ofd_lock(fd: RawFd, at: u64, write: bool, lock: bool) -> Res<()> {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = if !lock {
        libc::F_UNLCK
    } else if write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = at as i64;
    fl.l_len = 1;
    // SAFETY: F_OFD_SETLK reads the flock structure we own for the duration of the call.
    ret(unsafe {
        libc::syscall(
            libc::SYS_fcntl,
            fd,
            libc::F_OFD_SETLK,
            &mut fl as *mut libc::flock,
        )
    })
    .map(|_| ())
}

/// openat(2) with raw flags.
pub fn openat(dirfd: RawFd, path: &core::ffi::CStr, flags: i32, mode: u32) -> Res<RawFd> {
    // SAFETY: a raw system call; `path` is a valid NUL-terminated string for the call.
    ret(unsafe { libc::syscall(libc::SYS_openat, dirfd, path.as_ptr(), flags, mode) })
        .map(|v| v as RawFd)
}

/// fstatat(2) (newfstatat) into a caller-owned stat buffer.
pub fn fstatat(dirfd: RawFd, path: &core::ffi::CStr, flags: i32) -> Res<libc::stat> {
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a raw system call writing into `st`, which we own.
    ret(unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            dirfd,
            path.as_ptr(),
            &mut st as *mut libc::stat,
            flags,
        )
    })?;
    Ok(st)
}

/// Write all of `buf` to fd 2 (logging); errors are ignored.
pub fn stderr(buf: &[u8]) {
    let mut b = buf;
    while !b.is_empty() {
        // SAFETY: `b` is a live slice we own.
        match unsafe { write(2, b.as_ptr(), b.len()) } {
            Ok(0) | Err(_) => return,
            Ok(n) => b = &b[n..],
        }
    }
}

/// A private read-write description of the file behind `fd`, without O_APPEND (reopened
/// through `/proc/self/fd`, a magic link that also reaches unlinked files). The caller's
/// descriptor keeps exactly the access mode and flags the application asked for; flex
/// maps, recovers and commits through this one. Fails with EACCES where the file is not
/// readable and writable by us.
pub fn reopen_rw(fd: RawFd) -> Res<RawFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).map_err(|_| Errno::INVAL)?;
    openat(libc::AT_FDCWD, &path, libc::O_RDWR | libc::O_CLOEXEC, 0)
}

/// The access mode of a descriptor (O_RDONLY, O_WRONLY, O_RDWR) and whether it appends.
pub fn access_of(fd: RawFd) -> Res<(i32, bool)> {
    let fl = fcntl_int(fd, libc::F_GETFL, 0)?;
    Ok((fl & libc::O_ACCMODE, fl & libc::O_APPEND != 0))
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

/// The names in directory `path` (raw getdents64: flex never calls the readdir family,
/// which a preload may interpose).
pub fn list_dir(path: &core::ffi::CStr) -> Res<Vec<Vec<u8>>> {
    let fd = openat(
        libc::AT_FDCWD,
        path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )?;
    let mut names = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let r = loop {
        // SAFETY: a raw system call filling our own buffer.
        let n = match ret(unsafe {
            libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
        }) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let mut at = 0usize;
        while at + 19 < n {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name[].
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > n {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            names.push(name[..len].to_vec());
            at += reclen;
        }
    };
    let _ = close(fd);
    r.map(|_| names)
}
