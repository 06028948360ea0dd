//! The write gate: every call that can change a managed file's bytes or size passes it,
//! so a snapshot can find an instant between two writes of this process.
//!
//! A call counts itself in flight in its thread's own counter (a plain store: no locked
//! instruction, no cache line shared with other threads) and then reads the process-wide
//! word of flags and the current request's generation; with no flag set it goes on,
//! which is all it costs while no snapshot runs. A request sets its flags, then
//! `membarrier` makes every thread's counter store visible or its later flag load see the
//! flags (an asymmetric Dekker: the barrier is paid by the rare side), then sums the
//! counters. While a request is `PENDING` new calls step back and wait for the instant
//! (bounded); whoever finds nothing in flight answers "joined" for the process (`ACKED`
//! makes that once). While `ACTIVE` (the snapshot copies), a call first copies the old
//! bytes of the pages it changes (`cow`). Threads past the last counter, and every thread
//! where `membarrier` is not available, count in one shared counter with locked
//! instructions instead.

use super::control::{answer, state, Reason, Shared};
use crate::sys::thread::{futex_wait_shared, futex_wake_shared};
use core::cell::Cell;
use core::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*,
};
use std::time::{Duration, Instant};

pub(super) const ACKED: u64 = 1 << 28;
pub(super) const PENDING: u64 = 1 << 29;
pub(super) const ACTIVE: u64 = 1 << 30;

/// How long a call waits for the instant before it gives the snapshot up.
const JOIN_BOUND: Duration = Duration::from_secs(3);

/// The flags and, in the high half, the generation of the current request.
pub(super) static GATE: AtomicU64 = AtomicU64::new(0);

/// A thread's count of its calls in flight, on a cache line of its own (128 bytes: the
/// adjacent-line prefetcher pairs 64-byte lines).
#[repr(align(128))]
struct Counter(AtomicU32);
const COUNTERS: usize = 128;
static COUNTS: [Counter; COUNTERS] = [const { Counter(AtomicU32::new(0)) }; COUNTERS];
/// Counters handed out, at most COUNTERS (threads keep theirs for life: an exited
/// thread's stays at 0).
static HANDED: AtomicU32 = AtomicU32::new(0);
/// The calls in flight of threads without a counter of their own.
static SHARED: AtomicU32 = AtomicU32::new(0);
/// `membarrier(PRIVATE_EXPEDITED)` is registered for this image: threads may count in
/// their own counters.
static FENCED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's counter: `u32::MAX` not chosen yet, `COUNTERS` none (shared).
    static MINE: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// The counter this thread counts in.
#[inline]
fn counter() -> &'static AtomicU32 {
    if !FENCED.load(Relaxed) {
        return &SHARED;
    }
    let i = MINE.with(|m| {
        let i = m.get();
        if i != u32::MAX {
            return i;
        }
        let n = HANDED
            .fetch_update(Relaxed, Relaxed, |h| (h < COUNTERS as u32).then_some(h + 1))
            .unwrap_or(COUNTERS as u32);
        m.set(n);
        n
    });
    COUNTS.get(i as usize).map_or(&SHARED, |c| &c.0)
}

/// One more call of this thread in flight (`up`) or one fewer.
#[inline]
fn count(c: &'static AtomicU32, up: bool) {
    if core::ptr::eq(c, &SHARED) {
        // A full barrier on x86: the flag load after it sees a request's flags, or the
        // request's sum sees this count.
        if up {
            c.fetch_add(1, SeqCst);
        } else {
            c.fetch_sub(1, SeqCst);
        }
    } else {
        // Only this thread stores here; the request's membarrier orders it.
        let v = c.load(Relaxed);
        c.store(if up { v + 1 } else { v.saturating_sub(1) }, Relaxed);
        compiler_fence(SeqCst);
    }
}

/// The calls in flight in this process, as far as this thread can see: exact after
/// [`fence_threads`] (or a full fence for the shared counter).
pub(super) fn in_flight() -> u32 {
    let n = HANDED.load(Acquire) as usize;
    COUNTS[..n].iter().fold(SHARED.load(SeqCst), |a, c| {
        a.saturating_add(c.0.load(Relaxed))
    })
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: i64 = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: i64 = 1 << 4;

/// Let threads count in their own counters: register for the private expedited
/// `membarrier` (at arming, and again in a forked child, whose registration the fork
/// dropped). Without it every thread counts in the shared counter.
pub(super) fn use_thread_counters() {
    // SAFETY: membarrier takes no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    FENCED.store(r == 0, SeqCst);
}

/// After a request set its flags: every thread's counter store before now is visible
/// here, and every thread's flag load after now sees the flags. False if the kernel
/// refused (the counters cannot be trusted).
pub(super) fn fence_threads() -> bool {
    fence(SeqCst);
    if !FENCED.load(SeqCst) {
        return true;
    }
    // SAFETY: membarrier takes no pointers; async-signal-safe (a plain system call).
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

/// In a forked child: only the forking thread goes on, and it is in no gated call (fork
/// is not one): no call is in flight; the parent's request is not the child's.
pub fn after_fork_child() {
    for c in &COUNTS {
        c.0.store(0, Relaxed);
    }
    SHARED.store(0, Relaxed);
    let _ = GATE.fetch_update(SeqCst, SeqCst, |w| Some(w & !(PENDING | ACTIVE | ACKED)));
    if ARMED.load(Relaxed) {
        use_thread_counters();
    }
}

/// This process can take part in snapshots (its marker is mapped): calls count.
pub(super) static ARMED: AtomicBool = AtomicBool::new(false);
/// The control block of the current (or last) request, and this process's slot in it.
pub(super) static SESSION: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
pub(super) static SLOT: AtomicU32 = AtomicU32::new(0);
/// Calls waiting for the instant outside the count (they still look at `SESSION`).
pub(super) static WAITERS: AtomicU32 = AtomicU32::new(0);

pub(super) fn generation(v: u64) -> u32 {
    (v >> 32) as u32
}

pub(super) fn session() -> Option<Shared> {
    let p = SESSION.load(Acquire);
    // SAFETY: a control block stays mapped while a call holds the count or waits
    // (`join::replace` unmaps an old one only when neither is the case).
    (!p.is_null()).then(|| unsafe { Shared::new(p) })
}

/// A call is through the gate, counted in this counter (dropped: it left).
pub struct Gate(Option<&'static AtomicU32>);

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            leave(c);
        }
    }
}

/// What a gated call is about to change (built only while a snapshot runs).
pub enum Op {
    /// `len` bytes at `off`, or at the descriptor's position (`None`).
    Write { fd: i32, off: Option<u64>, len: u64 },
    /// The file's size set to `len` through a descriptor or a path.
    Truncate { fd: i32, len: u64 },
    /// The path is the program's pointer: read fault-safely, and only while a snapshot
    /// copies.
    TruncatePath {
        path: *const core::ffi::c_char,
        len: u64,
    },
    /// fallocate's mode and range.
    Fallocate {
        fd: i32,
        mode: i32,
        off: u64,
        len: u64,
    },
}

/// Pass the gate before a call described by `op`.
#[inline]
pub fn enter(op: impl FnOnce() -> Op) -> Gate {
    if !ARMED.load(Relaxed) {
        return Gate(None);
    }
    let c = counter();
    count(c, true);
    let v = GATE.load(SeqCst);
    if v & (PENDING | ACTIVE) != 0 {
        slow(c, v, op);
    }
    Gate(Some(c))
}

/// [`enter`] for a call on `fd`, if flex sees that descriptor's calls (the snapshotter
/// refuses a process whose writable descriptors of the file flex does not see).
#[inline]
pub fn enter_fd(fd: i32, op: impl FnOnce() -> Op) -> Gate {
    if !ARMED.load(Relaxed)
        || !crate::runtime::engine_if_started().is_some_and(|e| e.table.sees(fd))
    {
        return Gate(None);
    }
    enter(op)
}

#[cold]
fn slow(c: &'static AtomicU32, mut v: u64, op: impl FnOnce() -> Op) {
    let mut op = Some(op);
    loop {
        if v & PENDING != 0 {
            // Not part of the writes in flight the request waits for: step back.
            leave(c);
            wait_for_instant(generation(v));
            count(c, true);
            v = GATE.load(SeqCst);
            continue;
        }
        if v & ACTIVE == 0 {
            return;
        }
        let Some(s) = session() else { return };
        match s.ctrl().state.load(Acquire) {
            state::COPYING if !snapshotter_alive(s) => {
                // Killed mid-copy: nothing will be published, stop copying for it.
                s.abort(state::COPYING, Reason::None, 0);
            }
            state::COPYING => {
                if let Some(f) = op.take() {
                    // Never unwinds into the program's call (a failure aborts the
                    // snapshot, not the write).
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        super::cow::before(s, &f())
                    }));
                    if r.is_err() {
                        s.abort(
                            state::COPYING,
                            Reason::CopyFailed,
                            crate::sys::thread::getpid(),
                        );
                    }
                }
            }
            _ => {
                // Over (or given up): plain calls again, for this request.
                let g = generation(v);
                let _ = GATE.fetch_update(SeqCst, SeqCst, |w| {
                    (generation(w) == g).then_some(w & !ACTIVE)
                });
            }
        }
        return;
    }
}

/// Is the snapshot's snapshotter still running? (Async-signal-safe: one kill(0).)
pub(super) fn snapshotter_alive(s: Shared) -> bool {
    let pid = s.ctrl().snapshotter.load(Acquire);
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::syscall(libc::SYS_kill, pid, 0) } == 0
}

fn leave(c: &'static AtomicU32) {
    count(c, false);
    let v = GATE.load(SeqCst);
    if v & PENDING != 0 && v & ACKED == 0 {
        answer_joined(generation(v));
    }
}

/// If no call of this process is in flight for request `g`: say so, once. Called by the
/// request after [`fence_threads`], and by every call leaving while it is pending (a full
/// fence each: of two calls leaving at once, at least one sees the other gone).
pub(super) fn answer_joined(g: u32) {
    fence(SeqCst);
    if in_flight() != 0 {
        return;
    }
    let won = GATE
        .fetch_update(SeqCst, SeqCst, |w| {
            (generation(w) == g && w & PENDING != 0 && w & ACKED == 0).then_some(w | ACKED)
        })
        .is_ok();
    if !won {
        return;
    }
    let Some(s) = session() else { return };
    if let Some(slot) = s.slot(SLOT.load(Acquire) as usize) {
        slot.state.store(answer::JOINED, Release);
    }
    s.ctrl().answers.fetch_add(1, Release);
    futex_wake_shared(&s.ctrl().answers);
}

/// Wait until request `g` leaves its joining phase; past the bound, give it up.
fn wait_for_instant(g: u32) {
    WAITERS.fetch_add(1, SeqCst);
    if let Some(s) = session() {
        let start = Instant::now();
        let st = &s.ctrl().state;
        while st.load(Acquire) == state::JOINING {
            let left = JOIN_BOUND.saturating_sub(start.elapsed());
            if left.is_zero() {
                s.abort(state::JOINING, Reason::GaveUp, crate::sys::thread::getpid());
                break;
            }
            futex_wait_shared(st, state::JOINING, left.min(Duration::from_millis(50)));
        }
    }
    // The instant is past (or the request is over): this request holds nothing back.
    let _ = GATE.fetch_update(SeqCst, SeqCst, |w| {
        (generation(w) == g && w & PENDING != 0).then_some(w & !(PENDING | ACKED))
    });
    WAITERS.fetch_sub(1, SeqCst);
}

/// Stop taking part in the current snapshot: it fails with `why` (exec, spawn).
pub fn abandon(why: Reason) {
    let v = GATE.load(SeqCst);
    if v & (PENDING | ACTIVE) == 0 {
        return;
    }
    if let Some(s) = session() {
        let me = crate::sys::thread::getpid();
        if !s.abort(state::JOINING, why, me) {
            s.abort(state::COPYING, why, me);
        }
    }
}
