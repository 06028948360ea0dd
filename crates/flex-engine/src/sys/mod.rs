//! The engine's one way out to the kernel, a module per kernel concept: [`io`] (data
//! transfer), [`fs`] (files and metadata), [`fd`] (descriptors and locks), [`signal`]
//! (masks and directed signals), [`thread`] (futexes, thread ids), [`time`] (clocks), [`raw`] (the
//! `syscall` instruction, for libflex.so's passthrough). The engine never calls
//! the libc wrappers that libflex.so intercepts (that would call itself): these use
//! rustix, or `libc::syscall` where the buffer is a raw pointer owned by the application
//! (its validity is the kernel's to judge).

pub mod fd;
pub mod fs;
pub mod io;
pub mod raw;
pub mod signal;
pub mod thread;
pub mod time;

pub use fd::*;
pub use fs::*;
pub use io::*;

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
pub(crate) fn ret(r: libc::c_long) -> Res<usize> {
    if r < 0 {
        // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
        Err(Errno::from_raw_os_error(unsafe {
            *libc::__errno_location()
        }))
    } else {
        Ok(r as usize)
    }
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
