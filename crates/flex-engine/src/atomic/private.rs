//! flex's private descriptors of atomic files (the log's and the data duplicate), kept
//! out of the program's way when it `dup2`s onto their numbers.

use crate::runtime::engine;
use crate::sys;
use rustix::fd::RawFd;
use std::sync::atomic::Ordering::*;

/// The application `dup2`s onto `fd`, one of flex's own descriptors: move ours to another
/// number first (the kernel would silently replace it, and the next commit would write
/// through whatever the application put there). Best effort: without a free descriptor it
/// stays.
pub(crate) fn move_private(fd: RawFd) {
    if super::spare::before_dup_onto(fd) {
        return;
    }
    let e = engine();
    let moved = |old: RawFd| -> Option<RawFd> {
        let d = sys::fcntl_int(old, libc::F_DUPFD_CLOEXEC, 0).ok()?;
        let new = e.keep_private(d);
        e.close_private(old);
        Some(new)
    };
    for inode in e.all_inodes() {
        let Some(a) = inode.atomic.get() else {
            continue;
        };
        let _m = a.moving.lock().unwrap_or_else(|p| p.into_inner());
        let c = a.lock();
        let mut c = a.quiet(c);
        if c.log.m.fd == fd {
            if let Some(n) = moved(fd) {
                c.log.m.fd = n;
            }
            return;
        }
        if a.dfd() == fd {
            if let Some(n) = moved(fd) {
                a.dfd.store(n, Release);
            }
            return;
        }
    }
}
