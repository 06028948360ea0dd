//! The control block one snapshot shares between its snapshotter and the processes that
//! write the file: a memfd the snapshotter creates and the writers map through
//! `/proc/<snapshotter>/fd/<n>`. Nothing of it is ever in a directory, so a crash of
//! either side leaves nothing behind.
//!
//! Layout: [`Control`] at offset 0, then two bitmaps of [`MAX_PAGES`] bits each, one bit
//! per 4 KiB page of the file: `claimed` (someone is copying the page's old bytes into
//! the snapshot) and `done` (they are there). The memfd is sparse: only the bitmap words
//! of pages that exist are ever touched.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::*};
use core::time::Duration;

/// "FLEXSNP1": the layout's version.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FLEXSNP1");
/// The unit of copy-before-write.
pub const PAGE: u64 = 4096;
/// Largest file a snapshot takes: 1 TiB.
pub const MAX_PAGES: u64 = 1 << 28;
/// Writer processes one snapshot can coordinate.
pub const MAX_SLOTS: usize = 64;
/// A writer's descriptors of the file the snapshotter lists for it to check.
pub const MAX_FDS: usize = 16;
/// Bytes before the bitmaps.
pub const HEADER_LEN: usize = 16384;
const BITMAP_LEN: usize = (MAX_PAGES / 8) as usize;
/// The length of the memfd and of every mapping of it.
pub const MAP_LEN: usize = HEADER_LEN + 2 * BITMAP_LEN;
/// Name of the memfd every process that can take part in a snapshot maps (one page):
/// the snapshotter finds it in `/proc/<pid>/maps`.
pub const MARKER: &str = "flex-snapshot-v1";

/// The snapshot's phases ([`Control::state`]).
pub mod state {
    /// Writers are asked to finish the writes in flight and hold new ones.
    pub const JOINING: u32 = 1;
    /// The instant is past: writers copy a page's old bytes before they change it.
    pub const COPYING: u32 = 2;
    /// Complete: writers go back to their plain path.
    pub const DONE: u32 = 3;
    /// Given up (a writer refused or timed out, or a copy failed): nothing is published.
    pub const ABORTED: u32 = 4;
}

/// A writer's answer ([`Slot::state`]).
pub mod answer {
    pub const ASKED: u32 = 1;
    /// No write of this process is in flight, and every later one waits for the instant.
    pub const JOINED: u32 = 2;
    /// It cannot take part: [`Slot::reason`] says why.
    pub const REFUSED: u32 = 3;
}

/// Why a writer refused or a snapshot was aborted ([`Slot::reason`], [`Control::failed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    None = 0,
    /// It takes part in another snapshot right now.
    Busy = 1,
    /// Its program maps the file shared: its stores bypass flex.
    Mapped = 2,
    /// It has the file in failure-atomic mode (not supported yet).
    Atomic = 3,
    /// It holds a writable descriptor of the file that flex does not serve.
    Unmanaged = 4,
    /// It replaced its image (exec) or started a program during the snapshot.
    Exec = 5,
    /// It waited for the instant longer than its bound.
    GaveUp = 6,
    /// Copying a page's old bytes into the snapshot failed.
    CopyFailed = 7,
    /// The request was malformed or not for this process.
    BadRequest = 8,
    /// The kernel refused the barrier that makes its calls in flight countable.
    NoBarrier = 9,
}

impl Reason {
    pub fn from_raw(v: u32) -> Reason {
        use Reason::*;
        [
            None, Busy, Mapped, Atomic, Unmanaged, Exec, GaveUp, CopyFailed, BadRequest, NoBarrier,
        ]
        .get(v as usize)
        .copied()
        .unwrap_or(BadRequest)
    }
    pub fn describe(self) -> &'static str {
        match self {
            Reason::None => "no reason",
            Reason::Busy => "it is taking part in another snapshot",
            Reason::Mapped => "its program maps the file shared (its stores bypass flex)",
            Reason::Atomic => {
                "it has files in failure-atomic mode (not supported by snapshots yet)"
            }
            Reason::Unmanaged => {
                "it holds a writable descriptor of the file that flex does not serve"
            }
            Reason::Exec => {
                "it started another program, which writes without flex's copy-before-write"
            }
            Reason::GaveUp => "it waited longer than its bound for the snapshot's instant",
            Reason::CopyFailed => "copying a page into the snapshot failed",
            Reason::BadRequest => "the request was not valid for it",
            Reason::NoBarrier => "the kernel refused membarrier, which counts its calls in flight",
        }
    }
}

/// One writer process.
#[repr(C)]
pub struct Slot {
    pub pid: AtomicI32,
    pub state: AtomicU32,
    pub reason: AtomicU32,
    /// Copies in progress (the snapshotter copies a page claimed by a dead writer only
    /// when every live one is idle).
    pub busy: AtomicU32,
    /// Pages this writer copied before changing them.
    pub copied: AtomicU64,
    pub nfds: AtomicU32,
    pub fds: [AtomicI32; MAX_FDS],
}

#[repr(C)]
pub struct Control {
    pub magic: AtomicU64,
    pub state: AtomicU32,
    /// Bumped (and woken) at every writer's answer.
    pub answers: AtomicU32,
    pub snapshotter: AtomicI32,
    /// The snapshotter's descriptors of the file (read-only) and of the snapshot.
    pub src_fd: AtomicI32,
    pub dst_fd: AtomicI32,
    pub dev: AtomicU64,
    pub ino: AtomicU64,
    /// The file's size at the instant, and its pages.
    pub size: AtomicU64,
    pub pages: AtomicU64,
    pub failed: AtomicU32,
    pub failed_pid: AtomicI32,
    pub nslots: AtomicU32,
    pub slots: [Slot; MAX_SLOTS],
}

const _: () = assert!(core::mem::size_of::<Control>() <= HEADER_LEN);

/// A mapped control block ([`MAP_LEN`] bytes at `base`).
#[derive(Clone, Copy)]
pub struct Shared {
    base: *mut u8,
}

// SAFETY: every field is an atomic; the pointer is to a mapping that outlives the users
// (see the callers' rules on unmapping).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `base` is a live, writable mapping of [`MAP_LEN`] bytes of a control memfd, kept
    /// mapped for as long as this value or a copy is used.
    pub unsafe fn new(base: *mut u8) -> Shared {
        Shared { base }
    }
    pub fn ctrl(&self) -> &Control {
        // SAFETY: `new`'s contract; Control is all atomics, valid for any bytes (a fresh
        // memfd is zeroes).
        unsafe { &*(self.base as *const Control) }
    }
    fn word(&self, bitmap: usize, page: u64) -> (&AtomicU32, u32) {
        debug_assert!(page < MAX_PAGES);
        let off = HEADER_LEN + bitmap * BITMAP_LEN + (page / 32) as usize * 4;
        // SAFETY: inside the mapping (page < MAX_PAGES), 4-byte aligned (HEADER_LEN and
        // BITMAP_LEN are multiples of 4).
        let w = unsafe { &*(self.base.add(off) as *const AtomicU32) };
        (w, 1u32 << (page % 32))
    }
    /// Claim `page` for copying: true if this caller is the first.
    pub fn claim(&self, page: u64) -> bool {
        let (w, bit) = self.word(0, page);
        w.load(Acquire) & bit == 0 && w.fetch_or(bit, AcqRel) & bit == 0
    }
    pub fn is_done(&self, page: u64) -> bool {
        let (w, bit) = self.word(1, page);
        w.load(Acquire) & bit != 0
    }
    /// The old bytes of `page` are in the snapshot: wake whoever waits to change it.
    pub fn set_done(&self, page: u64) {
        let (w, bit) = self.word(1, page);
        w.fetch_or(bit, Release);
        crate::sys::thread::futex_wake_shared(w);
    }
    /// Wait (at most `timeout`) for a claimed page's old bytes to be copied.
    pub fn wait_done(&self, page: u64, timeout: Duration) {
        let (w, bit) = self.word(1, page);
        let v = w.load(Acquire);
        if v & bit == 0 {
            crate::sys::thread::futex_wait_shared(w, v, timeout);
        }
    }
    pub fn slot(&self, i: usize) -> Option<&Slot> {
        let n = (self.ctrl().nslots.load(Acquire) as usize).min(MAX_SLOTS);
        (i < n).then(|| &self.ctrl().slots[i])
    }
    /// Give up: the first failure wins and names its process; everyone waiting is woken.
    pub fn abort(&self, from: u32, reason: Reason, pid: i32) -> bool {
        let c = self.ctrl();
        let won = c
            .state
            .compare_exchange(from, state::ABORTED, AcqRel, Acquire)
            .is_ok();
        if won {
            c.failed.store(reason as u32, Release);
            c.failed_pid.store(pid, Release);
        }
        crate::sys::thread::futex_wake_shared(&c.state);
        won
    }
}
