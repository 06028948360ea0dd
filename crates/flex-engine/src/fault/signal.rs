//! The SIGSEGV/SIGBUS handler, its installation, and the application's view of those two
//! signals' actions.
//!
//! Once [`install`]ed, our handler stays the kernel-level action of SIGSEGV and SIGBUS; the
//! application's actions live in [`SLOTS`] (read by the handler, written by
//! [`app_sigaction`]). Slots are seqlocks of atomics so the handler reads them without
//! locks or allocation; writers serialise on a spin lock taken with every signal blocked,
//! so a signal handler calling `sigaction` on the same thread cannot deadlock on it.

use core::ffi::{c_int, c_void};
use core::mem::MaybeUninit;
use core::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::Once;

use super::kernels;
use crate::sys::{self, signal::KernelSigaction};

/// Words of a glibc `sigset_t` (1024 bits).
const SET_WORDS: usize = 16;
const _: () = assert!(core::mem::size_of::<libc::sigset_t>() == SET_WORDS * 8);

/// The two signals we handle, in slot order.
const SIGNALS: [c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

fn slot_index(sig: c_int) -> Option<usize> {
    SIGNALS.iter().position(|&s| s == sig)
}

/// One application action, readable from a signal handler (seqlock).
struct Slot {
    /// Even: stable; odd: a writer is updating the fields.
    seq: AtomicU32,
    handler: AtomicUsize,
    flags: AtomicI32,
    restorer: AtomicUsize,
    mask: [AtomicU64; SET_WORDS],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    seq: AtomicU32::new(0),
    handler: AtomicUsize::new(libc::SIG_DFL),
    flags: AtomicI32::new(0),
    restorer: AtomicUsize::new(0),
    mask: [ZERO64; SET_WORDS],
};

/// The application's actions for SIGSEGV and SIGBUS.
static SLOTS: [Slot; 2] = [EMPTY_SLOT, EMPTY_SLOT];

fn set_words(set: &libc::sigset_t) -> [u64; SET_WORDS] {
    // SAFETY: sigset_t is 128 bytes of plain integers (asserted above); any bit pattern
    // is a valid [u64; 16], and the read is unaligned-safe.
    unsafe { core::ptr::read_unaligned(set as *const libc::sigset_t as *const [u64; SET_WORDS]) }
}

fn words_set(words: &[u64; SET_WORDS]) -> libc::sigset_t {
    // SAFETY: as in set_words, in the other direction: sigset_t is plain integers.
    unsafe { core::ptr::read_unaligned(words as *const [u64; SET_WORDS] as *const libc::sigset_t) }
}

fn sigaction_from(
    handler: usize,
    flags: c_int,
    restorer: usize,
    mask: &[u64; SET_WORDS],
) -> libc::sigaction {
    // SAFETY: libc::sigaction is a plain C struct for which all-zero is valid.
    let mut a: libc::sigaction = unsafe { core::mem::zeroed() };
    a.sa_sigaction = handler;
    a.sa_flags = flags;
    a.sa_mask = words_set(mask);
    // SAFETY: Option<extern "C" fn()> has the layout of a nullable pointer; 0 maps to None
    // and any other value was a function pointer given to us in a sigaction struct.
    a.sa_restorer = unsafe { core::mem::transmute::<usize, Option<extern "C" fn()>>(restorer) };
    a
}

impl Slot {
    /// Async-signal-safe read (retries while a writer is active).
    fn load(&self) -> libc::sigaction {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let handler = self.handler.load(Ordering::Relaxed);
            let flags = self.flags.load(Ordering::Relaxed);
            let restorer = self.restorer.load(Ordering::Relaxed);
            let mut mask = [0u64; SET_WORDS];
            for (m, a) in mask.iter_mut().zip(self.mask.iter()) {
                *m = a.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return sigaction_from(handler, flags, restorer, &mask);
            }
        }
    }

    /// Write; the caller holds the [`WriteLock`].
    fn store(&self, _lock: &WriteLock, act: &libc::sigaction) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.handler.store(act.sa_sigaction, Ordering::Relaxed);
        self.flags.store(act.sa_flags, Ordering::Relaxed);
        self.restorer
            .store(act.sa_restorer.map_or(0, |f| f as usize), Ordering::Relaxed);
        for (a, w) in self.mask.iter().zip(set_words(&act.sa_mask)) {
            a.store(w, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// Serialises slot writers and installation. Taken with every signal blocked on this thread.
struct WriteLock {
    saved_mask: u64,
}

static WRITER: AtomicBool = AtomicBool::new(false);

/// rt_sigprocmask on the kernel's 64-bit signal set (no libc wrapper that could be
/// interposed, and async-signal-safe).
fn sigprocmask_raw(how: c_int, set: Option<&u64>, old: Option<&mut u64>) {
    sys::signal::sigprocmask(how, set, old);
}

impl WriteLock {
    fn lock() -> WriteLock {
        let mut saved_mask = 0u64;
        sigprocmask_raw(libc::SIG_SETMASK, Some(&!0u64), Some(&mut saved_mask));
        while WRITER
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        WriteLock { saved_mask }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        WRITER.store(false, Ordering::Release);
        sigprocmask_raw(libc::SIG_SETMASK, Some(&self.saved_mask), None);
    }
}

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

/// The real `sigaction` (0: not resolved yet; 1: not found, use the raw system call).
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);

fn resolve_real_sigaction() -> usize {
    let f = REAL_SIGACTION.load(Ordering::Acquire);
    if f != 0 {
        return f;
    }
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT skips this object, so inside
    // libflex.so (which exports its own `sigaction`) it finds libc's.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) } as usize;
    let f = if p == 0 { 1 } else { p };
    REAL_SIGACTION.store(f, Ordering::Release);
    f
}

const SA_RESTORER: c_int = 0x0400_0000;

/// `rt_sigaction` without libc, for when dlsym finds no `sigaction` (static binaries).
/// Async-signal-safe.
///
/// # Safety
/// `act`/`old` null or valid.
unsafe fn raw_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // glibc reserves 32 and 33 for its threads implementation.
    if !(1..=64).contains(&sig) || sig == 32 || sig == 33 {
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    }
    // SAFETY: act is null or valid (caller contract).
    let kact = unsafe { act.as_ref() }.map(|a| KernelSigaction {
        handler: a.sa_sigaction,
        flags: (a.sa_flags | SA_RESTORER) as u32 as u64,
        restorer: kernels::restorer(),
        mask: set_words(&a.sa_mask)[0],
    });
    let mut kold = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    if !sys::signal::rt_sigaction(sig, kact.as_ref(), &mut kold) {
        return -1;
    }
    if !old.is_null() {
        let mut mask = [0u64; SET_WORDS];
        mask[0] = kold.mask;
        let o = sigaction_from(kold.handler, kold.flags as c_int, kold.restorer, &mask);
        // SAFETY: old is valid for writes (caller contract).
        unsafe { old.write(o) };
    }
    0
}

/// The real `sigaction`. Async-signal-safe once resolved (it is, before any handler runs).
///
/// # Safety
/// `act`/`old` null or valid.
unsafe fn real_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let f = resolve_real_sigaction();
    if f == 1 {
        // SAFETY: forwarded caller contract.
        return unsafe { raw_sigaction(sig, act, old) };
    }
    // SAFETY: f came from dlsym("sigaction"), whose C signature SigactionFn matches.
    let f: SigactionFn = unsafe { core::mem::transmute::<usize, SigactionFn>(f) };
    // SAFETY: forwarded caller contract.
    unsafe { f(sig, act, old) }
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static ONCE: Once = Once::new();

/// Whether [`install`] has completed.
pub fn is_installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Install our SIGSEGV/SIGBUS handlers (idempotent, thread-safe). The actions found in
/// place become the application's (see [`app_sigaction`]).
pub fn install() {
    ONCE.call_once(|| {
        resolve_real_sigaction();
        // Detect kernels now rather than later in a hot path.
        let _ = crate::persist::nt_kind();
        let _ = crate::persist::flush_kind();
        let lock = WriteLock::lock();
        for (slot, &sig) in SLOTS.iter().zip(SIGNALS.iter()) {
            let mut ours = sigaction_from(handler as *const () as usize, 0, 0, &[0; SET_WORDS]);
            // SA_RESTART: a sent SIGSEGV/SIGBUS forwarded to the application does not turn
            // its blocking system calls into EINTR (what glibc's signal() also asks for).
            ours.sa_flags =
                libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART;
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: both pointers are to live sigaction structs.
            let r = unsafe { real_sigaction(sig, &ours, old.as_mut_ptr()) };
            if r != 0 {
                continue;
            }
            // SAFETY: the successful call filled `old` (and it was zeroed before).
            let mut old = unsafe { old.assume_init() };
            if old.sa_sigaction == handler as *const () as usize {
                // Another copy of us (e.g. re-installed): never forward to ourselves.
                old = sigaction_from(libc::SIG_DFL, 0, 0, &[0; SET_WORDS]);
            }
            slot.store(&lock, &old);
        }
        INSTALLED.store(true, Ordering::Release);
        drop(lock);
    });
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// `sigaction` as the application sees it. For SIGSEGV/SIGBUS once [`install`]ed, it
/// records and reports the application's action (same semantics as `sigaction`: `act`
/// and `old` may be null, `old` receives the previous action) without touching the
/// kernel's, which stays ours. Any other signal, or before [`install`], goes to the real
/// `sigaction` (so a bad signal number gets -1/EINVAL from it). A bad `act`/`old` pointer
/// gives -1/EFAULT like the system call.
///
/// # Safety
/// Same contract as libc's `sigaction`.
pub unsafe fn app_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let Some(idx) = slot_index(sig) else {
        if sig == crate::lease::SIGNAL && !act.is_null() {
            // The application takes the lease-break signal for itself: flex gives up its
            // leases (and with them over-allocation) rather than miss a break.
            crate::lease::app_claims_signal();
        }
        // SAFETY: forwarded caller contract.
        return unsafe { real_sigaction(sig, act, old) };
    };
    loop {
        let installed = is_installed();
        let mut new = None;
        if installed && !act.is_null() {
            let mut tmp = MaybeUninit::<libc::sigaction>::zeroed();
            let size = core::mem::size_of::<libc::sigaction>();
            // SAFETY: tmp is a live, writable sigaction; a bad `act` faults inside the
            // guarded copy, which the installed handler turns into a short count.
            let left = unsafe { kernels::copy(tmp.as_mut_ptr().cast(), act.cast(), size) };
            if left != 0 {
                set_errno(libc::EFAULT);
                return -1;
            }
            // SAFETY: fully copied from a caller's sigaction struct.
            let mut a = unsafe { tmp.assume_init() };
            let mut words = set_words(&a.sa_mask);
            // Like the kernel: SIGKILL and SIGSTOP cannot be blocked.
            words[0] &= !((1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1)));
            a.sa_mask = words_set(&words);
            new = Some(a);
        }
        let lock = WriteLock::lock();
        if !is_installed() {
            // SAFETY: forwarded caller contract; under the lock install() cannot run between
            // this check and the call, so our handler is not overwritten.
            let r = unsafe { real_sigaction(sig, act, old) };
            drop(lock);
            return r;
        }
        if !installed {
            // install() completed meanwhile: read `act` the guarded way.
            drop(lock);
            continue;
        }
        let prev = SLOTS[idx].load();
        if let Some(a) = &new {
            SLOTS[idx].store(&lock, a);
        }
        drop(lock);
        if !old.is_null() {
            let size = core::mem::size_of::<libc::sigaction>();
            // SAFETY: prev is a live sigaction; a bad `old` faults inside the guarded copy.
            let left = unsafe {
                kernels::copy(old.cast(), (&prev as *const libc::sigaction).cast(), size)
            };
            if left != 0 {
                set_errno(libc::EFAULT);
                return -1;
            }
        }
        return 0;
    }
}

/// `signal()` as the application sees it (glibc/BSD semantics: `sa_mask` = {sig},
/// `SA_RESTART`), through [`app_sigaction`]. glibc's own `signal`, `sigset`,
/// `bsd_signal` and `sysv_signal` call its internal sigaction directly, so the preload
/// must export these too and route SIGSEGV/SIGBUS here.
///
/// # Safety
/// Same contract as libc's `signal`.
pub unsafe fn app_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if handler == libc::SIG_ERR || !(1..=64).contains(&sig) {
        set_errno(libc::EINVAL);
        return libc::SIG_ERR;
    }
    let mut mask = [0u64; SET_WORDS];
    mask[0] = 1u64 << (sig - 1);
    let act = sigaction_from(handler, libc::SA_RESTART, 0, &mask);
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: both pointers are to live sigaction structs.
    if unsafe { app_sigaction(sig, &act, old.as_mut_ptr()) } != 0 {
        return libc::SIG_ERR;
    }
    // SAFETY: success filled `old` (and it was zeroed before).
    unsafe { old.assume_init() }.sa_sigaction
}

/// The SIGSEGV/SIGBUS handler. Async-signal-safe: atomics, raw system calls and libc's
/// (async-signal-safe) sigaction only; no allocation, no lock but the slot seqlock.
extern "C" fn handler(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo (SA_SIGINFO); null-checked anyway.
    let code = unsafe { info.as_ref() }.map_or(0, |i| i.si_code);
    let uc = ctx as *mut libc::ucontext_t;
    // si_code > 0: raised by the kernel for this thread's access (SI_KERNEL included, for
    // non-canonical addresses); <= 0: sent by kill/tgkill/sigqueue, never a guarded fault.
    if code > 0 && !uc.is_null() {
        // SAFETY: with SA_SIGINFO, ctx points to the interrupted thread's ucontext, which
        // the kernel restores (including RIP) when this handler returns.
        let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
        let rip = gregs[libc::REG_RIP as usize] as usize;
        if let Some(fixup) = kernels::fixup_for(rip) {
            gregs[libc::REG_RIP as usize] = fixup as i64;
            return;
        }
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: forwarded kernel arguments.
    unsafe { forward(sig, code, info, uc) };
    set_errno(saved_errno);
}

/// Deliver a signal that is not a guarded fault as the application's action would have.
///
/// # Safety
/// Called from [`handler`] with its kernel arguments.
unsafe fn forward(sig: c_int, code: c_int, info: *mut libc::siginfo_t, uc: *mut libc::ucontext_t) {
    let Some(idx) = slot_index(sig) else { return };
    let act = SLOTS[idx].load();
    let h = act.sa_sigaction;
    let sent = code <= 0;
    if h == libc::SIG_IGN && sent {
        return;
    }
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // A fault with SIG_IGN is fatal too (the kernel forces SIG_DFL). Restore the default
        // action: the faulting instruction re-executes and kills the process with the same
        // state (core dump) as without us. A sent signal does not recur: send it again.
        let dfl = sigaction_from(libc::SIG_DFL, 0, 0, &[0; SET_WORDS]);
        // SAFETY: a live sigaction; the real sigaction is async-signal-safe.
        unsafe { real_sigaction(sig, &dfl, core::ptr::null_mut()) };
        if sent {
            // SAFETY: info is null or the kernel's siginfo for this signal.
            unsafe { sys::signal::requeue(sig, info) };
        }
        return;
    }
    if act.sa_flags & libc::SA_RESETHAND != 0 {
        let lock = WriteLock::lock();
        // Only if no one changed it meanwhile.
        let cur = SLOTS[idx].load();
        if cur.sa_sigaction == h {
            let mut reset = cur;
            reset.sa_sigaction = libc::SIG_DFL;
            SLOTS[idx].store(&lock, &reset);
        }
        drop(lock);
    }
    // Signal mask during the application's handler, as the kernel would set it.
    let mut mask = if uc.is_null() {
        [0u64; SET_WORDS]
    } else {
        // SAFETY: uc is the kernel's ucontext for this delivery.
        set_words(unsafe { &(*uc).uc_sigmask })
    };
    for (m, a) in mask.iter_mut().zip(set_words(&act.sa_mask)) {
        *m |= a;
    }
    if act.sa_flags & libc::SA_NODEFER == 0 {
        mask[0] |= 1u64 << (sig - 1);
    }
    sigprocmask_raw(libc::SIG_SETMASK, Some(&mask[0]), None);
    if act.sa_flags & libc::SA_SIGINFO != 0 {
        type Action = extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void);
        // SAFETY: the application registered h with SA_SIGINFO, so it has this signature.
        let f = unsafe { core::mem::transmute::<usize, Action>(h) };
        f(sig, info, uc.cast());
    } else {
        type Handler = extern "C" fn(c_int);
        // SAFETY: the application registered h as a plain handler.
        let f = unsafe { core::mem::transmute::<usize, Handler>(h) };
        f(sig);
    }
    // Returning restores the interrupted context's mask (uc_sigmask) via rt_sigreturn.
}

/// Install `handler` (SA_SIGINFO) as the kernel's action for `sig`, through the real
/// `sigaction` (used for the lease-break signal, see `crate::lease`). Returns success.
pub(crate) fn install_info_handler(
    sig: c_int,
    handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void),
) -> bool {
    let mut act = sigaction_from(handler as *const () as usize, 0, 0, &[0; SET_WORDS]);
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: a live sigaction struct; no old action is asked for.
    unsafe { real_sigaction(sig, &act, core::ptr::null_mut()) == 0 }
}
