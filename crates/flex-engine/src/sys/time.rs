//! Clocks. Through glibc, which flex does not intercept: its vDSO lookup is the one that
//! tools such as valgrind, which hide or move the vDSO, keep working with (rustix's own
//! vDSO parser faults under valgrind).

/// The coarse monotonic clock's seconds (a vDSO read of a tick-updated value).
pub fn coarse_seconds() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec we own; CLOCK_MONOTONIC_COARSE always exists on
    // Linux, and on an error `ts` keeps its zero (the caller then looks again).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec
}
