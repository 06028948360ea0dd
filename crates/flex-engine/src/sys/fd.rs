//! Descriptors: close, fcntl, open-file-description locks, access modes.

use super::{ret, Res};
use rustix::fd::RawFd;

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

/// The access mode of a descriptor (O_RDONLY, O_WRONLY, O_RDWR) and whether it appends.
pub fn access_of(fd: RawFd) -> Res<(i32, bool)> {
    let fl = fcntl_int(fd, libc::F_GETFL, 0)?;
    Ok((fl & libc::O_ACCMODE, fl & libc::O_APPEND != 0))
}
