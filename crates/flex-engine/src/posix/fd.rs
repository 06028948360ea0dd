//! Descriptor calls: dup, dup2/dup3, fcntl (F_GETFL/F_SETFL, F_DUPFD), and the file offset
//! the kernel resolves record locks against.

use super::open::drop_fd;
use super::{desc, desc_exists, Fd, Pass, Route};
use crate::config::LogLevel;
use crate::desc::Desc;
use crate::fault;
use crate::log::flex_log;
use crate::runtime::{engine, engine_if_started};
use crate::stats::Call;
use crate::sys::{self, Res};
use std::sync::atomic::Ordering::*;

/// dup, F_DUPFD, F_DUPFD_CLOEXEC: the new descriptor shares the description.
pub fn dup_result(old: Fd, new: Fd) {
    let Some(e) = engine_if_started() else { return };
    take_over_shared(old);
    let Some(d) = e.table.get(old) else { return };
    e.stats.served(Call::dup);
    if new <= 2 {
        make_coherent(old, &d);
    }
    if let Some(prev) = e.table.set(new, d) {
        prev.fds.fetch_sub(1, AcqRel);
    }
}

/// A lazy descriptor about to be duplicated is taken over first: its description gets
/// flex's state, which the duplicate shares (a program that opens a file and moves it to
/// descriptor 0, as dd and shells do, is served as if it had opened it there; flex's
/// offset is the kernel's until then).
fn take_over_shared(fd: Fd) {
    let Some(e) = engine_if_started() else { return };
    if e.table.lazy_io(fd, None).is_some() {
        let _ = super::open::take_over(e, fd);
    }
}

/// A description now reachable through descriptor 0-2: hand the offset and an exact size
/// to the kernel and keep them there (see [`Desc::coherent`]).
fn make_coherent(fd: Fd, d: &Desc) {
    if d.is_demoted() || d.coherent.swap(true, AcqRel) {
        return;
    }
    let pos = *d.pos_at(fd);
    let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
    let _ = d.inode.make_exact(fd, true);
    flex_log!(LogLevel::Debug, "coherent fd={fd} pos={pos}");
}

/// dup2/dup3 before the kernel call: `new` is about to be closed silently.
pub fn dup2_before(old: Fd, new: Fd) {
    let Some(e) = engine_if_started() else { return };
    if old != new && e.is_private(new) {
        crate::atomic::move_private(new);
    }
    if old != new {
        // `new` is closed (if `old` is valid; a failed dup2 only loses its laziness).
        e.table.unlazy(new);
        take_over_shared(old);
    }
    if old == new || e.table.get(old).is_none() && e.table.get(new).is_none() {
        return;
    }
    // Only forget `new` if `old` is valid (else the kernel fails and `new` stays open).
    if sys::fcntl_int(old, libc::F_GETFD, 0).is_err() {
        return;
    }
    if let Some(d) = e.table.take(new) {
        drop_fd(e, new, d);
    }
}

/// A call the kernel resolves against the descriptor's file offset (record and OFD locks
/// with SEEK_CUR, lockf): put flex's offset there first. A coherent or demoted description
/// keeps its offset in the kernel already.
/// fcntl record and OFD locks (and F_GETLK): the kernel resolves `l_whence = SEEK_CUR`
/// against the descriptor's own offset, so only such a lock needs flex's offset there
/// (SQLite's, all SEEK_SET, cost an lseek each before).
///
/// # Safety
/// `lock` comes from the application: valid, or faulting (then the kernel answers EFAULT
/// and nothing is resolved).
pub unsafe fn offset_to_kernel_for_lock(fd: Fd, lock: *const libc::flock) {
    let mut whence: libc::c_short = 0;
    // Plain address arithmetic: the program's pointer is never dereferenced by Rust.
    let field = lock
        .cast::<u8>()
        .wrapping_add(core::mem::offset_of!(libc::flock, l_whence));
    // SAFETY: a guarded copy of the struct's l_whence field into our own short.
    let rem = unsafe {
        fault::copy(
            (&raw mut whence).cast(),
            field,
            core::mem::size_of::<libc::c_short>(),
        )
    };
    if rem == 0 && whence as i32 == libc::SEEK_CUR {
        offset_to_kernel(fd);
    }
}

pub fn offset_to_kernel(fd: Fd) {
    let Ok(d) = desc(fd) else { return };
    if d.is_demoted() || d.is_coherent() {
        return;
    }
    let pos = *d.pos_at(fd);
    let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
}

/// fcntl on a descriptor the table knows (a demoted one too). Record and OFD locks get
/// flex's offset in the kernel first, then pass; F_GETFL, F_SETFL and F_DUPFD(_CLOEXEC)
/// are served (the last two with the kernel's call made here); other commands pass.
///
/// # Safety
/// `arg` is the application's: for the lock commands a pointer to its `struct flock`,
/// valid or faulting (it is only read fault-safely).
pub unsafe fn fcntl(fd: Fd, cmd: i32, arg: libc::c_long) -> Route<i32> {
    if matches!(
        cmd,
        libc::F_SETLK
            | libc::F_SETLKW
            | libc::F_GETLK
            | libc::F_OFD_SETLK
            | libc::F_OFD_SETLKW
            | libc::F_OFD_GETLK
    ) {
        // A database takes and drops several locks per transaction: no reference to the
        // description unless the lock is relative to the offset (SEEK_CUR).
        if !desc_exists(fd) {
            return Route::Pass(Pass::NotManaged);
        }
        // SAFETY: forwarded contract (the lock's pointer is read fault-safely).
        unsafe { offset_to_kernel_for_lock(fd, arg as *const libc::flock) };
        return Route::Pass(Pass::KernelCommand);
    }
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        take_over_shared(fd);
    }
    let d = desc_or_pass!(fd);
    match cmd {
        libc::F_GETFL => Route::Served(fcntl_getfl(fd, &d)),
        libc::F_SETFL => Route::Served(fcntl_setfl(fd, &d, arg as i32)),
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let r = sys::fcntl_int(fd, cmd, arg);
            if let Ok(new) = r {
                dup_result(fd, new);
            }
            Route::Served(r)
        }
        _ => Route::Pass(Pass::KernelCommand),
    }
}

/// fcntl F_GETFL: the kernel's flags, but O_ASYNC only if the program set it (a write
/// lease flex takes sets it on the description).
fn fcntl_getfl(fd: Fd, d: &Desc) -> Res<i32> {
    sys::fcntl_int(fd, libc::F_GETFL, 0)
        .map(|k| (k & !libc::O_ASYNC) | (d.flags.load(Relaxed) & libc::O_ASYNC))
}

/// fcntl F_SETFL: the kernel descriptor takes the flags as they are (O_APPEND included),
/// flex keeps its copy of the status flags in step.
fn fcntl_setfl(fd: Fd, d: &Desc, arg: i32) -> Res<i32> {
    if let Some(a) = d.inode.atomic.get() {
        if arg & libc::O_APPEND != 0 {
            a.own_description(&d.inode);
        }
    }
    const CHANGEABLE: i32 =
        libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME;
    // Under the size lock: an append in progress finishes with the mode it started with,
    // and flex's own exact-offset writes (which lift O_APPEND for a moment) are not mixed
    // with the application's change.
    let r = d.inode.with_size_lock(|| {
        sys::fcntl_int(fd, libc::F_SETFL, arg as libc::c_long)?;
        let keep = d.flags.load(Relaxed) & !CHANGEABLE;
        d.flags.store(keep | (arg & CHANGEABLE), Relaxed);
        Ok(0)
    });
    engine().stats.served(Call::fcntl);
    r
}
