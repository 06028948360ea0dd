//! Files and their metadata: open, stat, sizes, allocation, sync, directories.

use super::fd::close;
use super::{bfd, ret, Errno, Res};
use rustix::fd::RawFd;

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

/// A private read-write description of the file behind `fd`, without O_APPEND (reopened
/// through `/proc/self/fd`, a magic link that also reaches unlinked files). The caller's
/// descriptor keeps exactly the access mode and flags the application asked for; flex
/// maps, recovers and commits through this one. Fails with EACCES where the file is not
/// readable and writable by us.
pub fn reopen_rw(fd: RawFd) -> Res<RawFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).map_err(|_| Errno::INVAL)?;
    openat(libc::AT_FDCWD, &path, libc::O_RDWR | libc::O_CLOEXEC, 0)
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

/// unlinkat(2) of `path` relative to `dirfd` (a file, not a directory).
pub fn unlinkat(dirfd: RawFd, path: &core::ffi::CStr) -> Res<()> {
    // SAFETY: a raw system call with a valid path string.
    ret(unsafe { libc::syscall(libc::SYS_unlinkat, dirfd, path.as_ptr(), 0) }).map(|_| ())
}

/// truncate(2) of `path` to the application's own (signed) length: the kernel judges it.
pub fn truncate(path: &core::ffi::CStr, len: i64) -> Res<()> {
    // SAFETY: a raw system call with a valid path string.
    ret(unsafe { libc::syscall(libc::SYS_truncate, path.as_ptr(), len) }).map(|_| ())
}

/// sync_file_range(2) with the application's own arguments.
pub fn sync_file_range(fd: RawFd, off: i64, n: i64, flags: u32) -> Res<()> {
    // SAFETY: a raw system call with scalar arguments.
    ret(unsafe { libc::syscall(libc::SYS_sync_file_range, fd, off, n, flags) }).map(|_| ())
}

/// A whole small file (/proc, /sys), through raw calls (None: it cannot be read).
pub fn read_file(path: &core::ffi::CStr) -> Option<Vec<u8>> {
    let fd = super::openat(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
    let mut v = Vec::with_capacity(8192);
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: our own buffer; the offset is the bytes read so far.
        match unsafe { super::pread(fd, buf.as_mut_ptr(), buf.len(), v.len() as u64) } {
            Ok(0) => break,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(super::Errno::INTR) => continue,
            Err(_) => {
                let _ = super::close(fd);
                return None;
            }
        }
    }
    let _ = super::close(fd);
    Some(v)
}

/// renameat2(2) of `from` to `to` (both absolute or relative to the current directory)
/// with RENAME_NOREPLACE: EEXIST if `to` exists, never replacing it.
pub fn rename_noreplace(from: &core::ffi::CStr, to: &core::ffi::CStr) -> Res<()> {
    // SAFETY: a raw system call with two valid path strings.
    ret(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
    .map(|_| ())
}
