//! Write leases: how flex knows it is a file's only opener.
//!
//! Over-allocating a file (growing it ahead and keeping the logical size in a trailer) is
//! only correct while no other process has the file open: another process would see the
//! larger size, and its O_APPEND writes would land past the trailer. A write lease
//! (`fcntl(F_SETLEASE, F_WRLCK)`) is granted only to the file's sole opener, and the
//! kernel breaks it before another `open` (or `truncate`) of the file returns: it sends
//! [`SIGNAL`] and blocks the opener until flex has trimmed the file to its logical size
//! and released the lease.
//!
//! The signal handler only wakes a thread (a futex word): trimming takes the inode's size
//! lock, which the interrupted thread may hold. The thread is created with the first
//! lease of a process image (again in a forked child, whose leases the fork released).

use crate::runtime::engine_if_started;
use crate::sys;
use core::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU8, Ordering::*};
use std::sync::Arc;

/// The lease-break signal (SIGRTMAX - 2 with glibc): above what programs usually take
/// (SIGRTMIN + n). A program that installs its own handler for it turns leases off.
pub const SIGNAL: c_int = 62;

/// fcntl command: the signal sent for this file's lease breaks (linux/fcntl.h).
const F_SETSIG: i32 = 10;

/// 0: not asked yet, 1: leases in use, 2: off (signal taken by the program, or no thread).
static STATE: AtomicU8 = AtomicU8::new(0);
/// Bumped by the handler; the thread sleeps on it.
static BREAKS: AtomicU32 = AtomicU32::new(0);
/// The process whose thread serves breaks (a forked child starts its own).
static SERVER: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(_sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if let Some(info) = unsafe { info.as_ref() } {
        if info.si_code == libc::SI_QUEUE {
            // A snapshotter's request (lease breaks come from the kernel, POLL_MSG).
            // SAFETY: this thread's errno slot, always valid; restored for the code the
            // signal interrupted.
            let saved = unsafe { *libc::__errno_location() };
            crate::snapshot::on_request(info);
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = saved };
            return;
        }
    }
    BREAKS.fetch_add(1, Release);
    // Async-signal-safe: a plain system call.
    sys::thread::futex_wake_all(&BREAKS);
}

fn serve() {
    // Not the current count: a break that came between the lease and this thread's start
    // must be served too (a spurious pass over the leases costs nothing).
    let mut seen = u32::MAX;
    loop {
        let now = BREAKS.load(Acquire);
        if now != seen {
            seen = now;
            release_broken();
            continue;
        }
        // Returns at once if a break came since, else sleeps until the handler wakes us.
        sys::thread::futex_wait(&BREAKS, seen);
    }
}

/// Trim and release every lease the kernel is breaking (F_GETLEASE then reports the type
/// the lease is being downgraded to, no longer F_WRLCK).
fn release_broken() {
    let Some(e) = engine_if_started() else { return };
    let mut done: Vec<Arc<crate::inode::Inode>> = Vec::new();
    for (_, d) in e.table.entries() {
        let i = &d.inode;
        if done.iter().any(|x| Arc::ptr_eq(x, i)) {
            continue;
        }
        let fd = i.lease_fd();
        if fd >= 0 && breaking(fd) {
            i.lease_broken();
        }
        if let Some(a) = i.atomic.get() {
            if a.lease_fd().is_some_and(breaking) {
                a.go_shared(i);
            }
        }
        done.push(i.clone());
    }
}

fn breaking(fd: i32) -> bool {
    sys::fcntl_int(fd, libc::F_GETLEASE, 0).is_ok_and(|t| t != libc::F_WRLCK)
}

fn pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The handler and this process's thread exist (false: leases are off).
fn ready() -> bool {
    match STATE.load(Acquire) {
        2 => return false,
        1 if SERVER.load(Acquire) == pid() => return true,
        _ => {}
    }
    static START: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = START.lock().unwrap_or_else(|p| p.into_inner());
    let me = pid();
    if STATE.load(Acquire) == 2 {
        return false;
    }
    if STATE.load(Acquire) == 1 && SERVER.load(Acquire) == me {
        return true;
    }
    if !install_handler() {
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("flex-lease".into())
        .stack_size(64 << 10)
        .spawn(serve);
    if spawned.is_err() {
        STATE.store(2, Release);
        return false;
    }
    SERVER.store(me, Release);
    STATE.store(1, Release);
    true
}

/// Install the handler for [`SIGNAL`] (lease breaks and snapshot requests), once per
/// image; false if the program owns the signal.
pub(crate) fn install_handler() -> bool {
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STATE.load(Acquire) == 2 {
        return false;
    }
    if INSTALLED.load(Acquire) {
        return true;
    }
    if !crate::fault::install_info_handler(SIGNAL, on_signal) {
        STATE.store(2, Release);
        return false;
    }
    INSTALLED.store(true, Release);
    true
}

/// Ask for a write lease on `fd`: granted only if no other open file description of the
/// file exists anywhere (this process's other descriptions and mappings included).
pub fn acquire(fd: i32) -> bool {
    if !ready() {
        return false;
    }
    if sys::fcntl_int(fd, F_SETSIG, SIGNAL as libc::c_long).is_err() {
        return false;
    }
    sys::fcntl_int(fd, libc::F_SETLEASE, libc::F_WRLCK as libc::c_long).is_ok()
}

/// Give the lease on `fd` back (an opener waiting for it proceeds).
pub fn release(fd: i32) {
    let _ = sys::fcntl_int(fd, libc::F_SETLEASE, libc::F_UNLCK as libc::c_long);
}

/// The program installs a handler for [`SIGNAL`]: no more leases, and the ones held are
/// given up (their files trimmed) so that no open waits for a break nobody sees.
pub fn app_claims_signal() {
    STATE.store(2, Release);
    crate::snapshot::disarm();
    let Some(e) = engine_if_started() else { return };
    for (_, d) in e.table.entries() {
        if d.inode.lease_fd() >= 0 {
            d.inode.lease_broken();
        }
        if let Some(a) = d.inode.atomic.get() {
            if a.lease_fd().is_some() {
                a.go_shared(&d.inode);
            }
        }
    }
}

/// Tests: over-allocate on page granularity too (`FLEX_TEST_OVERALLOCATE=1`), so the size
/// paths of DAX files (trailer, lease, trim) run on tmpfs and ext4.
pub fn overallocate_everywhere() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FLEX_TEST_OVERALLOCATE").is_some_and(|v| v == "1"))
}
