//! System-call-shaped entry points, one per intercepted call.
//!
//! Each returns a [`Route`]: `Route::Pass(reason)` when the call is not flex's to serve
//! (a descriptor or path flex does not manage, a description handed back to the kernel,
//! ...; the caller then makes the system call untouched), or `Route::Served(result)` with
//! the kernel's errno semantics. The preload library turns `Err(errno)` into `-1` +
//! `errno`. The argument policy is here too (a negative preadv offset, posix_fallocate's
//! range, the fcntl commands flex serves, close_range around flex's own descriptors), so
//! the preload library and the differential tests call the same code.
//!
//! The descriptor lookup `desc` answers `Err(Pass::NotManaged)` for descriptors flex
//! does not manage; entry points take it with `desc_or_pass!`, which returns that pass
//! visibly (a `?` on it does not compile in a function returning a `Route`). The reasons
//! are also the fallbacks `FLEX_STATS` counts, one atomic counter per reason.
//!
//! One file per call family: `open` (open, close, close_range), `rw` (read, write and
//! their vectored and positioned forms), `io` (the data paths under them), `check` (the
//! kernel's argument checks, in its order), `seek`, `sync`, `size` (ftruncate, truncate,
//! fallocate), `fd` (dup, fcntl, locks), `process` (fork, exec, exit), `stat`, `handoff`
//! (mmap, sendfile, copy_file_range, splice), `path` (unlink, rename, chdir) and `route`
//! (the answer and the reasons to pass). This file holds the descriptor lookup they share
//! and the small queries about the table.

use crate::desc::Desc;
use crate::runtime::engine_if_started;
use crate::stats::Call;
use crate::sys::{Errno, Res};
use std::sync::Arc;

/// The managed description of `fd`, or the entry point returns `Route::Pass(reason)`.
macro_rules! desc_or_pass {
    ($fd:expr) => {
        match $crate::posix::desc($fd) {
            Ok(d) => d,
            Err(p) => return $crate::posix::Route::Pass(p),
        }
    };
    // A call the kernel serves on a lazy descriptor that moves its position (and its
    // size, `size_too`) by an amount flex does not see.
    ($fd:expr, moves_lazy: $size_too:expr) => {
        match $crate::posix::desc($fd) {
            Ok(d) => d,
            Err(p) => {
                $crate::posix::lazy_moved($fd, $size_too);
                return $crate::posix::Route::Pass(p);
            }
        }
    };
}

/// As `desc_or_pass!`, for the read and write calls: a lazy descriptor is taken over
/// once the kernel has served enough of its IO calls (see [`io_desc`]).
macro_rules! io_desc_or_pass {
    ($fd:expr) => {
        io_desc_or_pass!($fd, None)
    };
    ($fd:expr, $at:expr) => {
        match $crate::posix::io_desc($fd, $at) {
            Ok(d) => d,
            Err(p) => return $crate::posix::Route::Pass(p),
        }
    };
}

mod check;
mod fd;
mod handoff;
mod io;
mod open;
mod path;
mod process;
mod route;
mod rw;
mod seek;
mod size;
mod stat;
mod sync;

pub use fd::{dup2_before, dup_result, fcntl, offset_to_kernel, offset_to_kernel_for_lock};
pub use handoff::kernel_handoff;
pub use open::{close, close_range, open};
pub use path::{chdir_happened, forget, path_identity};
pub use process::{
    after_fork_child, at_exit, before_exec, before_fork, before_underscore_exit, demote,
};
pub use route::{Pass, Route};
pub use rw::{pread, preadv, preadv2, pwrite, pwritev, pwritev2, read, readv, write, writev};
pub use seek::lseek;
pub use size::{fallocate, ftruncate, posix_fallocate, truncate};
pub use stat::{fix_stat, fstat_fix};
pub use sync::{fsync, sync_file_range};

type Fd = i32;

/// The managed description of `fd`; `Err(Pass::NotManaged)` if there is none (cheap when
/// nothing is managed: no engine, or an empty table, is one atomic load).
#[inline]
fn desc(fd: Fd) -> Result<Arc<Desc>, Pass> {
    engine_if_started()
        .and_then(|e| e.table.get(fd))
        .ok_or(Pass::NotManaged)
}

/// The managed description of `fd` for a read or write call. A lazy descriptor (opened
/// under FLEX_PATHS, not looked at yet) is the kernel's for its first FLEX_ADOPT_AFTER IO
/// calls, then flex takes it over as an open would have: a file opened, read once and
/// closed (DaxVM's short-lived file) never pays for an fstat, an inode or a mapping.
/// `at`: the range of a positioned call (those past the file's end do not count).
#[inline]
fn io_desc(fd: Fd, at: Option<crate::desc::LazyAt>) -> Result<Arc<Desc>, Pass> {
    let e = engine_if_started().ok_or(Pass::NotManaged)?;
    if let Some(d) = e.table.get(fd) {
        return Ok(d);
    }
    match e.table.lazy_io(fd, at) {
        None => Err(Pass::NotManaged),
        Some(n) if n < e.config.adopt_after => Err(Pass::Lazy),
        Some(_) => open::take_over(e, fd),
    }
}

/// See [`crate::desc::Table::lazy_moved`].
#[inline]
fn lazy_moved(fd: Fd, size_too: bool) {
    if let Some(e) = engine_if_started() {
        e.table.lazy_moved(fd, size_too);
    }
}

/// Count a call passed to the kernel (for the statistics of managed descriptors).
pub fn count_passthrough(call: Call) {
    if let Some(e) = engine_if_started() {
        e.stats.passed(call);
    }
}

/// Does the table know `fd` (managed, or handed back to the kernel)?
pub fn desc_exists(fd: Fd) -> bool {
    engine_if_started().is_some_and(|e| e.table.knows(fd))
}

/// A stream is about to be built on `fd` (fopen, fdopen): a lazy descriptor is taken over
/// now, so that the stream is flex's (glibc's own streams read through its internal calls,
/// which flex never sees) exactly when the file is one flex manages.
pub fn take_over_for_stream(fd: Fd) {
    if let Some(e) = engine_if_started() {
        if e.table.lazy_io(fd, None).is_some() {
            let _ = open::take_over(e, fd);
        }
    }
}

/// Is `fd` managed (for the shim's stdio and for tests)?
pub fn is_managed(fd: Fd) -> bool {
    desc(fd).is_ok_and(|d| !d.is_demoted())
}

/// Granularity of a managed descriptor's mapping (None until mapped).
pub fn granularity(fd: Fd) -> Option<crate::persist::Granularity> {
    desc(fd).ok()?.inode.granularity()
}

/// Map a managed descriptor now (used by the Rust API, which always wants the mapping).
pub fn map_now(fd: Fd) -> Res<()> {
    let d = desc(fd).map_err(|_| Errno::BADF)?;
    d.inode.map_for(fd, d.writable())
}

/// Where a write at `fd`'s position lands: `Some(offset)`, or `None` for an appending
/// descriptor (the snapshot gate asks, before the call).
pub fn write_position(fd: Fd) -> Res<Option<u64>> {
    if let Some(d) = engine_if_started().and_then(|e| e.table.get(fd)) {
        if d.append() {
            return Ok(None);
        }
        return Ok(Some(*d.pos_at(fd)));
    }
    if crate::sys::fcntl_int(fd, libc::F_GETFL, 0)? & libc::O_APPEND != 0 {
        return Ok(None);
    }
    crate::sys::lseek(fd, 0, libc::SEEK_CUR).map(Some)
}

/// The bytes a vectored call moves (0 if the kernel will refuse the array), read
/// fault-safely from the application's iovecs.
pub fn iov_len(iov: *const libc::iovec, cnt: i32) -> u64 {
    check::iovecs(iov, cnt).map_or(0, |v| check::iov_total(&v) as u64)
}
