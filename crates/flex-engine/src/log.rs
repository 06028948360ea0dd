//! `FLEX_LOG`: decisions logged to stderr with raw writes (never through stdio).

use crate::config::LogLevel;

/// Log a formatted line at `level` if enabled. Formatting allocates; only used when logging.
macro_rules! flex_log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::runtime::log_enabled($lvl) {
            $crate::log::emit(&format!($($arg)*));
        }
    };
}
pub(crate) use flex_log;

pub fn emit(msg: &str) {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let line = format!("flex[{pid}]: {msg}\n");
    crate::sys::stderr(line.as_bytes());
}

pub fn enabled(configured: LogLevel, lvl: LogLevel) -> bool {
    configured >= lvl && lvl != LogLevel::Off
}
