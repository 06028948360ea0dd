//! Fault-tolerant copies. (Placeholder implementation; the real one replaces it.)

/// Install the SIGSEGV/SIGBUS handlers that turn faults inside guarded copies into errors.
pub fn install() {}

/// Copy `len` bytes; returns the number of bytes NOT copied (0 on success).
///
/// # Safety
/// Ranges must not overlap.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
    0
}

/// Copy with non-temporal stores; every destination line is in flight (durable after a fence).
///
/// # Safety
/// Ranges must not overlap.
pub unsafe fn copy_nt(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe {
        core::ptr::copy_nonoverlapping(src, dst, len);
        crate::persist::flush(dst, len);
    }
    0
}

/// Zero `len` bytes at `dst`; returns the number of bytes NOT zeroed.
///
/// # Safety
/// `dst` must be valid for writes or the fault must be one the handler recovers.
pub unsafe fn zero(dst: *mut u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe { core::ptr::write_bytes(dst, 0, len) };
    0
}
