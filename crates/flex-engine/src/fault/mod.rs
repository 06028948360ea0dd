//! Fault-tolerant copies: a bad user pointer (SIGSEGV) or a mapping of a truncated file or
//! an unallocatable page (SIGBUS) makes a copy return a short count instead of killing the
//! process.
//!
//! Works like the Linux kernel's `copy_user` and exception tables: the copy loops are
//! assembly kernels (module `kernels`) whose address ranges are known; the SIGSEGV/SIGBUS handler
//! installed by [`install`] checks whether the interrupted RIP lies in a kernel and, if so,
//! moves RIP to the kernel's fixup, which returns the count of bytes not done. Any other
//! fault is forwarded to the application's handler (recorded by [`app_sigaction`]), or
//! with none the default action is restored and the faulting instruction re-executes, so
//! the process dies exactly as it would without us.
//!
//! All routines return the number of bytes NOT done (0 = complete). The count is
//! conservative: bytes `[0, len - returned)` are known to be done; some bytes after them
//! may have been written too.
//!
//! Without [`install`], a fault kills the process as an ordinary memory access would.
//!
//! [`copy_cstr`] reads a NUL-terminated string (a path) out of program memory the same way.

mod cstr;
mod kernels;
mod signal;

pub use cstr::{copy_cstr, PATH_MAX};
pub(crate) use signal::install_info_handler;
pub use signal::{app_sigaction, app_signal, install, is_installed};

use crate::persist::{self, FlushKind, NtKind};

/// Copy `len` bytes (SSE2 moves below 768 bytes, `rep movsb` from there on); returns the
/// number of bytes NOT copied (0 on success).
///
/// # Safety
/// Ranges must not overlap; each must be valid or its faults must be ones the handler
/// recovers (which needs [`install`]). Guarded faults are SIGSEGV/SIGBUS raised by the
/// copy's own accesses.
#[inline]
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract; the AVX2 kernel only where detection found AVX2
    // (and FLEX_CPU did not cap it below).
    unsafe {
        if persist::nt_kind() >= NtKind::Avx2 {
            kernels::copy_avx2(dst, src, len)
        } else {
            kernels::copy(dst, src, len)
        }
    }
}

/// Copy to persistent memory: non-temporal stores for the cache-line-aligned body, ordinary
/// stores + flush for the partial head/tail lines. On return every destination cache line
/// of `[dst, dst+len)` that was written is NT-stored or flushed: it is durable after the
/// caller's [`persist::fence`]. No fence inside. Returns the number of bytes NOT copied.
///
/// Kernel and flush instruction are [`persist::nt_kind`] and [`persist::flush_kind`].
///
/// # Safety
/// As [`copy`].
#[inline]
pub unsafe fn copy_nt(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract; the kinds come from detection, so are supported.
    unsafe { kernels::copy_nt(persist::nt_kind(), persist::flush_kind(), dst, src, len) }
}

/// [`copy_nt`] with an explicit kernel and flush instruction (tests, benchmarks).
///
/// # Panics
/// If the CPU lacks `kind` or `flush` (see `is_supported`).
///
/// # Safety
/// As [`copy`].
pub unsafe fn copy_nt_with(
    kind: NtKind,
    flush: FlushKind,
    dst: *mut u8,
    src: *const u8,
    len: usize,
) -> usize {
    assert!(
        kind.is_supported(),
        "{} not supported by this CPU",
        kind.as_str()
    );
    assert!(
        flush.is_supported(),
        "{} not supported by this CPU",
        flush.as_str()
    );
    // SAFETY: forwarded caller contract; support checked above.
    unsafe { kernels::copy_nt(kind, flush, dst, src, len) }
}

/// Zero `len` bytes at `dst` (like [`copy`]: SSE2 or `rep stosb`); returns the number of
/// bytes NOT zeroed.
///
/// # Safety
/// `dst` must be valid for writes or its faults must be ones the handler recovers.
#[inline]
pub unsafe fn zero(dst: *mut u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe { kernels::zero(dst, len) }
}

/// How many bytes from `dst` can be written before the first unwritable page (a page is
/// writable whole or not at all), up to `len`: the count a kernel read into `dst` would
/// return. Zeroes them on the way: for a caller about to overwrite them anyway.
///
/// # Safety
/// As [`zero`].
pub unsafe fn zero_writable_prefix(dst: *mut u8, len: usize) -> usize {
    let mut got = 0;
    while got < len {
        // SAFETY: inside the caller's range.
        let p = unsafe { dst.add(got) };
        let n = (4096 - (p as usize & 4095)).min(len - got);
        // SAFETY: forwarded caller contract.
        if unsafe { zero(p, n) } != 0 {
            break;
        }
        got += n;
    }
    got
}

/// Zero persistent memory, with the durability contract of [`copy_nt`].
///
/// # Safety
/// As [`zero`].
#[inline]
pub unsafe fn zero_nt(dst: *mut u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract; the kinds come from detection, so are supported.
    unsafe { kernels::zero_nt(persist::nt_kind(), persist::flush_kind(), dst, len) }
}

/// [`zero_nt`] with an explicit kernel and flush instruction (tests, benchmarks).
///
/// # Panics
/// If the CPU lacks `kind` or `flush`.
///
/// # Safety
/// As [`zero`].
pub unsafe fn zero_nt_with(kind: NtKind, flush: FlushKind, dst: *mut u8, len: usize) -> usize {
    assert!(
        kind.is_supported(),
        "{} not supported by this CPU",
        kind.as_str()
    );
    assert!(
        flush.is_supported(),
        "{} not supported by this CPU",
        flush.as_str()
    );
    // SAFETY: forwarded caller contract; support checked above.
    unsafe { kernels::zero_nt(kind, flush, dst, len) }
}

/// Write back every cache line of `[addr, addr+len)` (no fence) with
/// [`persist::flush_kind`], surviving a fault (e.g. a file truncated by another process).
/// Returns 0 when every line was flushed, else a non-zero count of bytes from the first
/// line not flushed to the end of the range.
///
/// # Safety
/// The range must be mapped or its faults must be ones the handler recovers.
#[inline]
pub unsafe fn flush(addr: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract; the kind comes from detection.
    unsafe { kernels::flush(addr, len, persist::flush_kind()) }
}

/// [`flush`] with an explicit instruction.
///
/// # Panics
/// If the CPU lacks `kind`.
///
/// # Safety
/// As [`flush`].
pub unsafe fn flush_with(kind: FlushKind, addr: *const u8, len: usize) -> usize {
    assert!(
        kind.is_supported(),
        "{} not supported by this CPU",
        kind.as_str()
    );
    // SAFETY: forwarded caller contract; support checked above.
    unsafe { kernels::flush(addr, len, kind) }
}
