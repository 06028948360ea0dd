//! Threads and processes: ids, futexes on static words, exit.

use core::sync::atomic::AtomicU32;

/// This process's id (raw: no libc cache to go stale across a raw clone).
pub fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// This thread's id.
pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// Sleep until `word` is woken, if it still holds `seen` (FUTEX_WAIT, private). Returns at
/// once when the value changed; spurious wake-ups happen: callers loop.
pub fn futex_wait(word: &AtomicU32, seen: u32) {
    let _ = rustix::thread::futex::wait(word, rustix::thread::futex::Flags::PRIVATE, seen, None);
}

/// Wake every waiter on `word` (FUTEX_WAKE, private). Async-signal-safe.
pub fn futex_wake_all(word: &AtomicU32) {
    let _ =
        rustix::thread::futex::wake(word, rustix::thread::futex::Flags::PRIVATE, i32::MAX as u32);
}

/// Sleep while `word` (in memory shared with other processes) holds `seen`, at most
/// `timeout` (FUTEX_WAIT, shared). Async-signal-safe; spurious wake-ups happen.
pub fn futex_wait_shared(word: &AtomicU32, seen: u32, timeout: core::time::Duration) {
    let ts = rustix::thread::futex::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    let _ =
        rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), seen, Some(&ts));
}

/// Wake every waiter on `word`, in memory shared with other processes (FUTEX_WAKE,
/// shared). Async-signal-safe.
pub fn futex_wake_shared(word: &AtomicU32) {
    let _ =
        rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
}
