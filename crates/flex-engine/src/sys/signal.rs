//! Signal masks and signals sent to this thread, on the kernel's 64-bit signal set. Raw
//! system calls: no libc wrapper that a preload could interpose, and async-signal-safe.

use super::thread::{getpid, gettid};

/// rt_sigprocmask(how, set, old) on this thread (errors cannot happen with valid `how`).
pub fn sigprocmask(how: i32, set: Option<&u64>, old: Option<&mut u64>) -> bool {
    let set_ptr = set.map_or(core::ptr::null(), |s| s as *const u64);
    let old_ptr = old.map_or(core::ptr::null_mut(), |o| o as *mut u64);
    // SAFETY: both pointers are null or point to live 8-byte sets, the size passed.
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, how, set_ptr, old_ptr, 8usize) == 0 }
}

/// Send `sig` to this thread (tgkill).
pub fn raise(sig: i32) {
    // SAFETY: a raw system call with scalar arguments, directed at this thread.
    unsafe { libc::syscall(libc::SYS_tgkill, getpid(), gettid(), sig) };
}

/// Queue `sig` with the kernel's own `info` to this thread again (rt_tgsigqueueinfo), as
/// the kernel delivered it; plain [`raise`] when `info` is null or the kernel refuses.
///
/// # Safety
/// `info` is null or points to a siginfo the kernel gave this process.
pub unsafe fn requeue(sig: i32, info: *mut libc::siginfo_t) {
    // SAFETY: forwarded contract; scalar arguments otherwise.
    let queued = !info.is_null()
        && unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, getpid(), gettid(), sig, info) }
            == 0;
    if !queued {
        raise(sig);
    }
}

/// The kernel's `struct sigaction` for x86_64 `rt_sigaction`.
#[repr(C)]
pub struct KernelSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

/// rt_sigaction(sig, act, old) with the kernel's structure; false on failure (errno set).
pub fn rt_sigaction(sig: i32, act: Option<&KernelSigaction>, old: &mut KernelSigaction) -> bool {
    let act = act.map_or(core::ptr::null(), |k| k as *const KernelSigaction);
    // SAFETY: pointers to live kernel-layout structures; sigsetsize 8 is the kernel's.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act,
            old as *mut KernelSigaction,
            8usize,
        ) == 0
    }
}
