//! How a process takes part: it is *armed* at its first writable open of a managed file
//! (the request signal's handler installed, the gate counting, a marker memfd mapped so
//! the snapshotter can tell it from a process without flex), and it *joins* a request
//! from the signal handler, with raw system calls and atomics only.

use super::control::{self, answer, state, Reason, Shared, MAP_LEN, MARKER};
use super::gate::{self, ACTIVE, ARMED, GATE, PENDING, SESSION, SLOT, WAITERS};
use crate::sys;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::*};

/// Only libflex.so's calls pass the gate: a process gets armed only under it.
static GATED_ABI: AtomicBool = AtomicBool::new(false);
/// 0: not yet, 1: armed (or trying), 2: cannot (the program owns the signal).
static ARM: AtomicU8 = AtomicU8::new(0);
/// Files this process's program mapped shared (hashes of dev and inode; never cleared,
/// so a snapshot of one is refused for the life of the image), and whether more did.
static MAPPED: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
static MAPPED_MORE: AtomicBool = AtomicBool::new(false);
/// A file of this process is in failure-atomic mode.
static ATOMIC: AtomicBool = AtomicBool::new(false);

/// libflex.so gates its calls: processes under it may take part in snapshots.
pub fn calls_are_gated() {
    if !GATED_ABI.load(Relaxed) {
        GATED_ABI.store(true, Relaxed);
    }
}

/// Before a writable open of a managed file: make this process one a snapshot can
/// coordinate (once per image).
pub(crate) fn arm() {
    if ARM.load(Relaxed) != 0 || !GATED_ABI.load(Relaxed) || crate::runtime::config().no_snapshots {
        return;
    }
    ARM.store(1, Relaxed);
    if !crate::lease::install_handler() {
        ARM.store(2, Relaxed);
        return;
    }
    // Counting first: once the marker is visible, a request can come.
    gate::use_thread_counters();
    ARMED.store(true, SeqCst);
    let _ = map_marker();
}

fn map_marker() -> sys::Res<()> {
    use rustix::fs::{memfd_create, MemfdFlags};
    use rustix::mm::{mmap, MapFlags, ProtFlags};
    let fd = memfd_create(MARKER, MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, 4096)?;
    // SAFETY: a fresh shared mapping of our own memfd at an address the kernel picks;
    // unmapped only by `disarm`.
    let p = unsafe {
        mmap(
            core::ptr::null_mut(),
            4096,
            ProtFlags::READ,
            MapFlags::SHARED,
            &fd,
            0,
        )
    }?;
    MARKER_AT.store(p.cast(), Release);
    Ok(())
}

static MARKER_AT: core::sync::atomic::AtomicPtr<u8> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// The program took the request signal for itself: no snapshotter may ask this process
/// any more (without the marker it counts as a writer without flex).
pub(crate) fn disarm() {
    let p = MARKER_AT.swap(core::ptr::null_mut(), AcqRel);
    if !p.is_null() {
        // SAFETY: the marker's own mapping, which nothing reads.
        unsafe { libc::syscall(libc::SYS_munmap, p as usize, 4096usize) };
    }
}

fn key(dev: u64, ino: u64) -> u64 {
    (dev.rotate_left(32) ^ ino) | 1
}

/// The program maps `fd` (libflex.so's mmap): remember a shared mapping that can store
/// into the file, and give up a snapshot of it that is under way.
pub fn before_mmap(fd: i32, prot: i32, flags: i32) {
    if !ARMED.load(Relaxed) || fd < 0 || flags & libc::MAP_SHARED == 0 {
        return;
    }
    let writable = prot & libc::PROT_WRITE != 0
        || sys::fcntl_int(fd, libc::F_GETFL, 0).is_ok_and(|f| f & libc::O_ACCMODE == libc::O_RDWR);
    let Ok(st) = sys::fstat(fd) else { return };
    if !writable || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return;
    }
    let k = key(st.st_dev, st.st_ino);
    if !MAPPED.iter().any(|m| m.load(Relaxed) == k)
        && !MAPPED
            .iter()
            .any(|m| m.compare_exchange(0, k, AcqRel, Relaxed).is_ok())
    {
        MAPPED_MORE.store(true, Release);
    }
    if let Some(s) = gate::session() {
        let c = s.ctrl();
        if c.dev.load(Acquire) == st.st_dev && c.ino.load(Acquire) == st.st_ino {
            gate::abandon(Reason::Mapped);
        }
    }
}

fn maps(dev: u64, ino: u64) -> bool {
    let k = key(dev, ino);
    MAPPED_MORE.load(Acquire) || MAPPED.iter().any(|m| m.load(Acquire) == k)
}

/// A file of this process went into failure-atomic mode.
pub(crate) fn note_atomic() {
    ATOMIC.store(true, Relaxed);
}

/// `/proc/<pid>/fd/<fd>` in a stack buffer (no allocation: the signal handler uses it).
pub(crate) struct ProcFd([u8; 48]);

impl ProcFd {
    pub(crate) fn new(pid: i32, fd: i32) -> ProcFd {
        let mut b = [0u8; 48];
        b[..6].copy_from_slice(b"/proc/");
        let mut n = push_num(&mut b, 6, pid as u32 as u64);
        b[n..n + 4].copy_from_slice(b"/fd/");
        n = push_num(&mut b, n + 4, fd as u32 as u64);
        b[n] = 0;
        ProcFd(b)
    }
    pub(crate) fn cstr(&self) -> &core::ffi::CStr {
        core::ffi::CStr::from_bytes_until_nul(&self.0).unwrap_or(c"/")
    }
}

fn push_num(b: &mut [u8], mut n: usize, v: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut k = 0;
    let mut v = v;
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while k > 0 {
        k -= 1;
        b[n] = digits[k];
        n += 1;
    }
    n
}

/// The request signal (sigqueue from a snapshotter of the same user): join it, or
/// refuse with the reason. Runs in a signal handler: raw system calls and atomics only.
pub(crate) fn on_request(info: &libc::siginfo_t) {
    // SAFETY: si_pid/si_uid/si_value are valid for an SI_QUEUE signal (checked by the
    // caller).
    let (spid, uid, value) = unsafe {
        (
            info.si_pid(),
            info.si_uid(),
            info.si_value().sival_ptr as usize as u64,
        )
    };
    if uid != rustix::process::geteuid().as_raw() {
        return;
    }
    let ctrl_fd = value as u32 as i32;
    let slot_ix = (value >> 32) as usize;
    let path = ProcFd::new(spid, ctrl_fd);
    let Ok(fd) = sys::openat(
        libc::AT_FDCWD,
        path.cstr(),
        libc::O_RDWR | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
    // SAFETY: a fresh shared mapping of the control memfd at an address the kernel picks.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0usize,
            MAP_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0usize,
        )
    };
    let _ = sys::close(fd);
    if p < 0 {
        return;
    }
    let base = p as usize as *mut u8;
    // SAFETY: mapped above with MAP_LEN bytes; unmapped below or kept as the session.
    let s = unsafe { Shared::new(base) };
    let c = s.ctrl();
    let me = sys::thread::getpid();
    let slot = match s.slot(slot_ix) {
        Some(sl) if c.magic.load(Acquire) == control::MAGIC && sl.pid.load(Acquire) == me => sl,
        _ => {
            unmap(base);
            return;
        }
    };
    let answer_refused = |why: Reason| {
        slot.reason.store(why as u32, Release);
        slot.state.store(answer::REFUSED, Release);
        c.answers.fetch_add(1, Release);
        sys::thread::futex_wake_shared(&c.answers);
    };
    let refuse = |why: Reason| {
        answer_refused(why);
        unmap(base);
    };
    if !ARMED.load(Acquire) {
        return refuse(Reason::BadRequest);
    }
    let cur = GATE.load(SeqCst);
    if cur & (PENDING | ACTIVE) != 0 {
        if let Some(old) = gate::session() {
            let st = old.ctrl().state.load(Acquire);
            if matches!(st, state::JOINING | state::COPYING) {
                if super::gate::snapshotter_alive(old) {
                    return refuse(Reason::Busy);
                }
                // Its snapshotter died (kill -9): that snapshot is over.
                old.abort(st, Reason::None, 0);
            }
        }
    }
    if ATOMIC.load(Acquire) {
        return refuse(Reason::Atomic);
    }
    if maps(c.dev.load(Acquire), c.ino.load(Acquire)) {
        return refuse(Reason::Mapped);
    }
    let n = (slot.nfds.load(Acquire) as usize).min(control::MAX_FDS);
    let e = crate::runtime::engine_if_started();
    if slot.fds[..n]
        .iter()
        .any(|f| !e.is_some_and(|e| e.table.sees(f.load(Acquire))))
    {
        return refuse(Reason::Unmanaged);
    }
    SLOT.store(slot_ix as u32, Release);
    let prev = SESSION.swap(base, SeqCst);
    let g = gate::generation(cur).wrapping_add(1);
    let _ = GATE.fetch_update(SeqCst, SeqCst, |_| {
        Some(((g as u64) << 32) | PENDING | ACTIVE)
    });
    if !gate::fence_threads() {
        // The calls in flight cannot be counted: this request cannot be joined. Its block
        // stays the session (and the last one stays mapped): a call that saw the flags
        // may be looking at it, and no count says when it stops.
        let _ = GATE.fetch_update(SeqCst, SeqCst, |w| {
            (gate::generation(w) == g).then_some(w & !(PENDING | ACTIVE))
        });
        return answer_refused(Reason::NoBarrier);
    }
    gate::answer_joined(g);
    // The last request's block: unmapped only if no call can still be looking at it.
    if !prev.is_null() && gate::in_flight() == 0 && WAITERS.load(SeqCst) == 0 {
        unmap(prev);
    }
}

fn unmap(base: *mut u8) {
    // SAFETY: `base` is a control block mapping of MAP_LEN bytes nobody uses any more.
    unsafe { libc::syscall(libc::SYS_munmap, base as usize, MAP_LEN) };
}
