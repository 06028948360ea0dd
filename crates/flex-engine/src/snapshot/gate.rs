//! The write gate: every call that can change a managed file's bytes or size passes it,
//! so a snapshot can find an instant between two writes of this process.
//!
//! One process-wide word: the calls in flight (low bits), three flags, and the
//! generation of the current request (high half). A call adds one to it (a full barrier
//! on x86, so a request's flags and the call's count see each other: Dekker); with no
//! flag set it goes on, which is all it costs while no snapshot runs. While a request is
//! `PENDING` new calls step back and wait for the instant (bounded); the last call in
//! flight to leave answers "joined" for the process (`ACKED` makes that once). While
//! `ACTIVE` (the snapshot copies), a call first copies the old bytes of the pages it
//! changes (`cow`).

use super::control::{answer, state, Reason, Shared};
use crate::sys::thread::{futex_wait_shared, futex_wake_shared};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

pub(super) const COUNT: u64 = (1 << 28) - 1;
pub(super) const ACKED: u64 = 1 << 28;
pub(super) const PENDING: u64 = 1 << 29;
pub(super) const ACTIVE: u64 = 1 << 30;

/// How long a call waits for the instant before it gives the snapshot up.
const JOIN_BOUND: Duration = Duration::from_secs(3);

pub(super) static GATE: AtomicU64 = AtomicU64::new(0);
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

/// A call is through the gate (dropped: it left).
pub struct Gate(bool);

impl Drop for Gate {
    fn drop(&mut self) {
        if self.0 {
            leave();
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
        return Gate(false);
    }
    let v = GATE.fetch_add(1, SeqCst);
    if v & (PENDING | ACTIVE) == 0 {
        return Gate(true);
    }
    slow(v, op);
    Gate(true)
}

/// [`enter`] for a call on `fd`, if flex sees that descriptor's calls (the snapshotter
/// refuses a process whose writable descriptors of the file flex does not see).
#[inline]
pub fn enter_fd(fd: i32, op: impl FnOnce() -> Op) -> Gate {
    if !ARMED.load(Relaxed)
        || !crate::runtime::engine_if_started().is_some_and(|e| e.table.sees(fd))
    {
        return Gate(false);
    }
    enter(op)
}

#[cold]
fn slow(mut v: u64, op: impl FnOnce() -> Op) {
    let mut op = Some(op);
    loop {
        if v & PENDING != 0 {
            // Not part of the writes in flight the request waits for: step back.
            leave();
            wait_for_instant(generation(v));
            v = GATE.fetch_add(1, SeqCst);
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

fn leave() {
    let v = GATE.fetch_sub(1, SeqCst);
    if v & COUNT == 1 && v & PENDING != 0 && v & ACKED == 0 {
        answer_joined(generation(v));
    }
}

/// No call of this process is in flight for request `g`: say so, once.
pub(super) fn answer_joined(g: u32) {
    let won = GATE
        .fetch_update(SeqCst, SeqCst, |w| {
            (generation(w) == g && w & PENDING != 0 && w & ACKED == 0 && w & COUNT == 0)
                .then_some(w | ACKED)
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
